"""NorenOMS (Shoonya) broker client: REST calls, the WebSocket feed and the error classification."""

from runtime.noren.errors import (
    BrokerError,
    BrokerProtocolError,
    BrokerRejected,
    CredentialsRejected,
    LoginFailed,
    NotSent,
    RateLimited,
    SessionExpired,
    UnknownOutcome,
    classify_request_exception,
    error_from_emsg,
    error_from_http_status,
    is_credentials_rejection,
    is_no_data,
    is_session_expired,
)
from runtime.noren.rest import NorenRestClient, SessionInfo
from runtime.noren.ws import NorenWebSocket

__all__ = [
    "BrokerError",
    "BrokerProtocolError",
    "BrokerRejected",
    "CredentialsRejected",
    "LoginFailed",
    "NorenRestClient",
    "NorenWebSocket",
    "NotSent",
    "RateLimited",
    "SessionExpired",
    "SessionInfo",
    "UnknownOutcome",
    "classify_request_exception",
    "error_from_emsg",
    "error_from_http_status",
    "is_credentials_rejection",
    "is_no_data",
    "is_session_expired",
]
