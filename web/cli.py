"""Flask CLI: `db upgrade`, `tenants create NAME`, `keys rotate`."""
from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import AppGroup

from shared import migrate
from shared.nonces import reseal_pending
from shared.tenants import create_tenant, rotate_keys
from web import runtime

db_cli = AppGroup("db", help="Database schema.")
tenants_cli = AppGroup("tenants", help="Tenants and their API keys.")
keys_cli = AppGroup("keys", help="Encryption keys.")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema."""
    migrate.upgrade(runtime().settings.database_url)
    click.echo("schema is up to date")


@tenants_cli.command("create")
@click.argument("name")
def tenants_create(name: str) -> None:
    """Create a tenant and print it with its API key (shown only here)."""
    with runtime().db.session() as session:
        tenant, api_key = create_tenant(session, name)
        click.echo(json.dumps({"id": tenant.id, "name": tenant.name, "api_key": api_key}))


@keys_cli.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret under the newest key and print the count."""
    rt = runtime()
    with rt.db.session() as session:
        count = rotate_keys(session, rt.cipher)
    count += reseal_pending(rt.redis, rt.cipher)  # connect flows under way keep working
    click.echo(json.dumps({"reencrypted": count}))


def register(app: Flask) -> None:
    """Attach the command groups to the app."""
    for group in (db_cli, tenants_cli, keys_cli):
        app.cli.add_command(group)
