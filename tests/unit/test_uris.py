"""scitq URIs: parsing and validation, no I/O."""
from __future__ import annotations

import pytest

from scitq_app import uris
from scitq_app.errors import Invalid


@pytest.mark.parametrize("value,scheme,path,folder", [
    ("s3://bucket/key.fq.gz", "s3", "bucket/key.fq.gz", False),
    ("s3://bucket/dir/", "s3", "bucket/dir/", True),
    ("azure://container/a/b", "azure", "container/a/b", False),
    ("my-remote_2://x", "my-remote_2", "x", False),
    ("http://example.org/data.txt", "http", "example.org/data.txt", False),
    ("https://example.org:8443/a?x=1", "https", "example.org:8443/a?x=1", False),
    ("ftp://ftp.ncbi.nlm.nih.gov/genomes/", "ftp", "ftp.ncbi.nlm.nih.gov/genomes/", True),
    ("file:///data/ref.fa", "file", "/data/ref.fa", False),
    ("file:///data/", "file", "/data/", True),
    ("sftp://host/a..b/c", "sftp", "host/a..b/c", False),
])
def test_valid_uris_parse(value, scheme, path, folder):
    u = uris.parse(value)
    assert (u.raw, u.scheme, u.path, u.folder, u.actions) == (value, scheme, path, folder, ())
    assert u.location == value


def test_builtin_schemes_are_known():
    assert uris.parse("HTTPS://example.org/x").builtin
    assert not uris.parse("s3://b/x").builtin


def test_basename():
    assert uris.parse("s3://b/dir/file.txt").basename == "file.txt"
    assert uris.parse("s3://b/dir/").basename == "dir"


@pytest.mark.parametrize("value,actions", [
    ("s3://b/ref.tar.gz|untar", ("untar",)),
    ("s3://b/ref.fa.gz|gunzip", ("gunzip",)),
    ("s3://b/x.zip|unzip|mv:sub/dir", ("unzip", "mv:sub/dir")),
    ("https://h/x.tgz|gunzip|untar", ("gunzip", "untar")),
])
def test_resource_actions(value, actions):
    u = uris.parse(value, allow_actions=True)
    assert u.actions == actions
    assert "|" not in u.location and u.raw == value


@pytest.mark.parametrize("value,why", [
    ("", "empty"),
    ("bucket/key", "not a URI"),
    ("s3:/bucket/key", "not a URI"),
    ("://bucket", "not a URI"),
    ("3s://bucket/key", "not a URI"),
    ("s3://", "no path"),
    ("s3:///", "no path"),
    ("s3://bucket/../etc/passwd", ".."),
    ("s3://bucket/a/..", ".."),
    ("file:///data/../etc/shadow", ".."),
    ("https://user:secret@example.org/x", "credentials"),
    ("http://user@example.org/x", "credentials"),
    ("s3://key:secret@bucket/x", "credentials"),
    ("s3://bucket/a\x00b", "NUL"),
    ("s3://bucket/a\nb", "control"),
    ("s3://bucket/a\tb", "control"),
    ("s3://bucket/a\x7fb", "control"),
    ("s3://bucket/a\x1bb", "control"),
    ("file://data/x", "absolute"),
    ("file://relative", "absolute"),
    ("s3:///bucket/x", "unexpected '/'"),
    ("s3://bucket//x", "empty path segment"),
    ("s3://b/" + "x" * 5000, "longer"),
])
def test_invalid_uris_are_refused_with_the_reason(value, why):
    with pytest.raises(Invalid) as info:
        uris.parse(value, "inputs[2]")
    assert why in info.value.message
    assert info.value.data["field"] == "inputs[2]"
    assert info.value.message.startswith("inputs[2]")


@pytest.mark.parametrize("value", [None, 3, ["s3://b/x"], b"s3://b/x"])
def test_non_strings_are_refused(value):
    with pytest.raises(Invalid):
        uris.parse(value)


@pytest.mark.parametrize("value,why", [
    ("s3://b/x|untar", "only allowed on resources"),
])
def test_actions_outside_resources_are_refused(value, why):
    with pytest.raises(Invalid) as info:
        uris.parse(value)
    assert why in info.value.message


@pytest.mark.parametrize("value", [
    "s3://b/x|explode", "s3://b/x|", "s3://b/x|untar:arg", "s3://b/x|gunzip:1", "s3://b/x|mv",
    "s3://b/x|mv:", "s3://b/x|mv:/abs", "s3://b/x|mv:../up", "s3://b/x|mv:a/../../b", "s3://b/x|UNTAR",
])
def test_bad_actions_are_refused(value):
    with pytest.raises(Invalid):
        uris.parse(value, allow_actions=True)


def test_unknown_remotes_are_refused_when_the_remotes_are_known():
    assert uris.parse("s3://b/x", remotes=["s3", "azure"]).scheme == "s3"
    assert uris.parse("https://h/x", remotes=[]).scheme == "https"
    assert uris.parse("file:///x", remotes=["s3"]).scheme == "file"
    with pytest.raises(Invalid) as info:
        uris.parse("gcs://b/x", "output", remotes=["s3", "azure"])
    assert "unknown storage remote 'gcs'" in info.value.message
    assert uris.parse("gcs://b/x").scheme == "gcs"  # without the list, any remote name is accepted


def test_parse_list_names_the_bad_item():
    assert [u.raw for u in uris.parse_list(["s3://b/1", "s3://b/2"], "inputs")] == ["s3://b/1", "s3://b/2"]
    assert [u.raw for u in uris.parse_list("s3://b/1", "inputs")] == ["s3://b/1"]
    with pytest.raises(Invalid) as info:
        uris.parse_list(["s3://b/1", "s3://b/../x"], "inputs")
    assert info.value.data["field"] == "inputs[1]"
    with pytest.raises(Invalid):
        uris.parse_list({"a": 1}, "inputs")


def test_an_output_is_always_a_folder():
    assert uris.parse_output("s3://b/out").raw == "s3://b/out/"
    assert uris.parse_output("s3://b/out/").raw == "s3://b/out/"
    assert uris.parse_output("s3://b/out").folder
    with pytest.raises(Invalid):
        uris.parse_output("s3://b/out|untar")
