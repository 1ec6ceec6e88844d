"""Flask CLI: `db upgrade`, `tenants create|rotate-key|list`, `keys rotate`, `connections call`."""
from __future__ import annotations

import json
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select

from shared import migrate
from shared.models import Tenant
from shared.nonces import reseal_pending
from shared.tenants import TenantNotFound, announce_key_change, create_tenant, find_tenant, rotate_api_key, rotate_keys
from web import runtime
from web.serializers import iso

db_cli = AppGroup("db", help="Database schema.")
tenants_cli = AppGroup("tenants", help="Tenants and their API keys.")
keys_cli = AppGroup("keys", help="Encryption keys.")
connections_cli = AppGroup("connections", help="Connections.")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


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


@tenants_cli.command("rotate-key")
@click.argument("name")
def tenants_rotate_key(name: str) -> None:
    """Give a tenant (by name, or id) a new API key and print it; the old key stops working at once."""
    rt = runtime()
    with rt.db.session() as session:
        try:
            tenant = find_tenant(session, name)
        except TenantNotFound as error:
            raise click.ClickException(str(error)) from None
        api_key = rotate_api_key(session, tenant)
        printed = {"id": tenant.id, "name": tenant.name, "api_key": api_key}
    announce_key_change(rt.redis, tenant.id)  # after the commit, so no process reloads the old key
    click.echo(json.dumps(printed))


@tenants_cli.command("list")
def tenants_list() -> None:
    """Print one JSON object per tenant, oldest first (never a key, nor its hash)."""
    with runtime().db.session() as session:
        for tenant in session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)):
            click.echo(json.dumps({"id": tenant.id, "name": tenant.name, "webhook_url": tenant.webhook_url,
                                   "created_at": iso(tenant.created_at)}))


@keys_cli.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret under the newest key, in small committed batches, and print the count."""
    rt = runtime()
    count = rotate_keys(rt.db, rt.cipher)
    count += reseal_pending(rt.redis, rt.cipher)  # connect flows under way keep working
    click.echo(json.dumps({"reencrypted": count}))


@connections_cli.command("call")
@click.argument("connection_id")
@click.argument("method", type=click.Choice(METHODS, case_sensitive=False))
@click.argument("path")
@click.option("--json", "body", metavar="BODY", help="A JSON request body.")
def connections_call(connection_id: str, method: str, path: str, body: str | None) -> None:
    """One call to the provider's API with the connection's token: prints the status, then the JSON.

    PATH is under the integration's api_base_url, e.g. /contact/email:ann@example.com."""
    from oauth_keeper_client import ClientError  # the client package, only for this command

    from web.connection_calls import call

    payload: Any = None
    if body is not None:
        try:
            payload = json.loads(body)
        except ValueError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="--json") from None
    try:
        status, answer = call(connection_id, method.upper(), path, payload)
    except (ClientError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(status)
    click.echo(json.dumps(answer, indent=2))
    if status >= 400:
        raise SystemExit(1)


def register(app: Flask) -> None:
    """Attach the command groups to the app."""
    for group in (db_cli, tenants_cli, keys_cli, connections_cli):
        app.cli.add_command(group)
