"""Test support: real components started by the tests themselves."""
