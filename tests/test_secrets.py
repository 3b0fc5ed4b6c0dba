"""Secrets stay secret: the results database's password, given the documented way (the
environment), never appears in Dagster's resource config (what the UI shows), in logs, or in
what the CLI prints, while the resource still connects with it."""

from __future__ import annotations

import json
import logging

import dagster as dg
from sqlalchemy.engine import make_url

from code_location.definitions import build_definitions
from commands.cli import main

PASSWORD = "s3cr3t-PW-42"


def test_database_password_stays_out_of_dagster_config_logs_and_output(
    pg_url, monkeypatch, tmp_path, capsys, caplog
):
    url = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("DAGSTER_DEEPFAKE_POSTGRES_URL", url)
    monkeypatch.setenv("DAGSTER_DEEPFAKE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DAGSTER_DEEPFAKE_UPLOAD_URI", (tmp_path / "bucket").as_uri())
    caplog.set_level(logging.DEBUG)

    defs = build_definitions()
    shown = json.dumps({name: res.model_dump() for name, res in defs.resources.items()}, default=str)
    assert PASSWORD not in shown
    assert "DAGSTER_DEEPFAKE_POSTGRES_URL" in shown  # the UI names the variable instead

    with dg.build_resources({"postgres": defs.resources["postgres"]}) as resources:
        db = resources.postgres.db()
        assert make_url(db.url).password == PASSWORD  # resolved at run time, and it connects
        assert db.get_job("v_0000000000000000") is None

    assert main(["db-url"]) == 0
    printed = capsys.readouterr().out.strip()
    assert PASSWORD not in printed and make_url(printed).password == "***"
    assert PASSWORD not in caplog.text
