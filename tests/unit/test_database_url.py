"""PostgreSQL URLs read as libpq reads them: a host, or the directory of the server's Unix socket."""
from __future__ import annotations

import pytest

from scitq_app.errors import ConfigError
from scitq_app.store.postgres import parse_url


@pytest.mark.parametrize("url, where", [
    ("postgresql://scitq:pw@db.example:5433/scitq", {"host": "db.example", "port": 5433}),
    ("postgresql://scitq:pw@[::1]/scitq", {"host": "::1", "port": 5432}),
    ("postgresql:///scitq", {"host": "127.0.0.1", "port": 5432}),
    ("postgresql://scitq:pw@/scitq?host=db.example", {"host": "db.example", "port": 5432}),
    # a directory: the socket in it, its name from the port, the path's case kept
    ("postgresql://scitq:pw@%2Fvar%2Frun%2Fpostgresql/scitq", {"unix_sock": "/var/run/postgresql/.s.PGSQL.5432"}),
    ("postgresql://scitq@%2Ftmp%2FPG-Sockets:5444/scitq", {"unix_sock": "/tmp/PG-Sockets/.s.PGSQL.5444"}),
    ("postgresql://scitq:pw@/scitq?host=/var/run/postgresql", {"unix_sock": "/var/run/postgresql/.s.PGSQL.5432"}),
    ("postgresql://scitq:pw@%2Ftmp%2F.s.PGSQL.5432/scitq", {"unix_sock": "/tmp/.s.PGSQL.5432"}),
])
def test_a_url_names_a_host_and_port_or_a_unix_socket(url, where):
    args = parse_url(url)
    assert {k: args[k] for k in ("host", "port", "unix_sock") if k in args} == where
    assert args["database"] == "scitq"


def test_user_and_password_are_read_unquoted():
    assert parse_url("postgresql://lab%40x:p%2Fw@db/scitq") == {
        "user": "lab@x", "password": "p/w", "database": "scitq", "host": "db", "port": 5432}


@pytest.mark.parametrize("url", ["mysql://u:p@db/scitq", "postgresql://u:p@db:99999/scitq",
                                 "postgresql://u:p@db/", "postgresql://u:p@db:0/scitq"])
def test_a_url_that_is_not_postgresql_s_is_a_config_error_that_does_not_show_the_password(url):
    with pytest.raises(ConfigError) as e:
        parse_url(url)
    assert "must look like postgresql://USER:PASSWORD@HOST:PORT/DB" in e.value.message
    assert ":p@" not in e.value.message
