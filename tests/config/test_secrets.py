"""Credentials inside URLs: found (also when an AWS secret's "/" breaks the URL), redacted, refused."""

import pytest

from dinoflow.config.secrets import credential_problem, redact_tree, redact_urls


@pytest.mark.parametrize(
    "text,redacted",
    [
        ("s3://user:hunter2@bucket/pool/", "s3://***@bucket/pool/"),
        ("s3://AKIAEXAMPLE:wJal/K7MD+bPx@bucket/pool", "s3://***@bucket/pool"),  # unencoded "/" in the secret
        ("https://ghp_token@github.example/x", "https://***@github.example/x"),
        ("http://u:p%40ss@host:5000/api", "http://***@host:5000/api"),
        ("see s3://a:b@bk/x and https://c:d@h/y", "see s3://***@bk/x and https://***@h/y"),
        ("postgresql://mlflow:pw@db:5432/m", "postgresql://***@db:5432/m"),
        ("postgresql+psycopg2://mlflow@db:5432/m", "postgresql+psycopg2://mlflow@db:5432/m"),  # a user name only
    ],
)
def test_redact(text, redacted):
    assert redact_urls(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "s3://bucket/user@example.com/img.png",  # "@" in an object key
        "http://host:5000/path@x",  # "@" in the path
        "sqlite:///mlflow.db",
        "data/curated",
        "mail me: someone@example.com",
    ],
)
def test_no_false_positives(text):
    assert redact_urls(text) == text and credential_problem(text) is None


def test_problem_says_where_credentials_belong_and_never_echoes_them():
    s3 = credential_problem("s3://user:hunter2@bucket/pool/")
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in s3 and "hunter2" not in s3 and "s3://***@bucket/pool/" in s3
    http = credential_problem("https://alice:pw@mlflow.example.com")
    assert "MLFLOW_TRACKING_USERNAME" in http and "pw@" not in http
    db = credential_problem("postgresql://mlflow:pw@db/m")
    assert "PGPASSWORD" in db and "MLFLOW_TRACKING_URI" in db
    assert credential_problem("postgresql://mlflow@db/m") is None


def test_redact_tree_keeps_structure():
    tree = {"a": ["s3://k:s@b/x", 1, None], "b": ("https://t@h/",), "c": {"d": 2.5}}
    assert redact_tree(tree) == {"a": ["s3://***@b/x", 1, None], "b": ("https://***@h/",), "c": {"d": 2.5}}
