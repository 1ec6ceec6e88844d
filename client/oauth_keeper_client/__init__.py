"""Client of oauth-keeper (`Keeper`) and of respond.io's API v2 with a kept connection (`RespondIO`)."""
from oauth_keeper_client.errors import (
                                        ClientError,
                                        KeeperError,
                                        NeedsReauth,
                                        NotFound,
                                        RateLimited,
                                        RespondIOError,
                                        Revoked,
                                        ServiceUnavailable,
                                        TokenRejected,
)
from oauth_keeper_client.keeper import Keeper
from oauth_keeper_client.models import Connection, ConnectSession, Integration, Token
from oauth_keeper_client.records import Channel, Contact, SentMessage, WorkspaceUser
from oauth_keeper_client.respondio import RespondIO, RetryPolicy
from oauth_keeper_client.tokens import TokenCache, TokenSource

__all__ = ["Channel", "ClientError", "ConnectSession", "Connection", "Contact", "Integration", "Keeper",
           "KeeperError", "NeedsReauth", "NotFound", "RateLimited", "RespondIO", "RespondIOError", "RetryPolicy",
           "Revoked", "SentMessage", "ServiceUnavailable", "Token", "TokenCache", "TokenRejected", "TokenSource",
           "WorkspaceUser"]
