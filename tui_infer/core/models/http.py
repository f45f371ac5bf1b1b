"""Everything about talking HTTP to the hub, in one place: the one client factory
(`http_client`: short timeouts, tui-infer's user agent, HF_ENDPOINT as base URL, the
live HF_HUB_OFFLINE refusal, an optional fail-fast transport that turns an unreachable
hub into HubOfflineError at once), the per-request auth headers (HF_TOKEN as it is
now), huggingface_hub's shared session pointed at that factory, `ping`, and the
translation of whatever huggingface_hub or httpx2 raised (or an HTTP status) into one
clear HubError. Offline, nothing here waits long on the network."""

from __future__ import annotations

import threading
from typing import Any

from tui_infer.core.models.hub_types import (
    HubAccessError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    endpoint,
    hf_token,
    offline_by_env,
)

CONNECT_TIMEOUT_S = 5.0
API_TIMEOUT_S = 15.0


def http_client(
    *,
    read_timeout_s: float = API_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    fail_fast: bool = False,
) -> Any:
    """The one way tui-infer talks HTTP to the hub: an httpx2.Client with short timeouts,
    tui-infer's user agent, the endpoint (HF_ENDPOINT, read now) as base URL, redirects
    followed, and HF_HUB_OFFLINE checked at each request (huggingface_hub freezes it at
    import). The token is not baked in: callers add `auth_headers()` per request.

    fail_fast: a refused or timed-out connection raises HubOfflineError at once, which
    huggingface_hub's http_backoff does not retry (it would for ~20 s); our own download
    loop wants the plain httpx2 errors, to retry them with its backoff.
    """
    import platform

    import httpx2

    from tui_infer import __version__

    def refuse_offline(request: Any) -> None:
        if offline_by_env():
            raise HubOfflineError("offline (HF_HUB_OFFLINE is set): search and download are off")

    # not build_hf_headers: it may fetch (through get_session, so through this factory)
    # and would deadlock huggingface_hub's session lock
    agent = f"tui-infer/{__version__}; python/{platform.python_version()}"
    return httpx2.Client(
        base_url=endpoint(),
        headers={"user-agent": agent},
        transport=_fail_fast_transport() if fail_fast else httpx2.HTTPTransport(),
        event_hooks={"request": [refuse_offline]},
        follow_redirects=True,
        timeout=httpx2.Timeout(read_timeout_s, connect=connect_timeout_s),
    )


def _fail_fast_transport() -> Any:
    import httpx2

    class FailFast(httpx2.HTTPTransport):
        def handle_request(self, request: Any) -> Any:
            try:
                return super().handle_request(request)
            except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout) as exc:
                raise HubOfflineError(
                    f"offline: cannot reach {request.url.scheme}://{request.url.host}"
                    f"{':' + str(request.url.port) if request.url.port else ''} "
                    f"({type(exc).__name__}); search and download need the network, "
                    "everything else works"
                ) from None

    return FailFast()


def auth_headers() -> dict[str, str]:
    """huggingface_hub's headers for a request, with HF_TOKEN as it is now. (Building them
    may fetch the hub's agent registry once: through our client, like every other call.)"""
    from huggingface_hub.utils import build_hf_headers

    configure_hf_session()

    from tui_infer import __version__

    return dict(
        build_hf_headers(token=hf_token(), library_name="tui-infer", library_version=__version__)
    )


_configured = threading.Lock()
_factory_set = False


def configure_hf_session() -> None:
    """huggingface_hub's shared client has no timeout (a dead hub hangs list_models), and
    its offline check is frozen at import: it gets ours (fail-fast) instead."""
    global _factory_set
    with _configured:
        if _factory_set:
            return
        from huggingface_hub import set_client_factory

        set_client_factory(lambda: http_client(fail_fast=True))
        _factory_set = True


def ping(timeout_s: float = 3.0) -> int:
    """The HTTP status of one small API request; HubOfflineError (with the reason) when
    the hub cannot be reached within timeout_s."""
    import httpx2

    try:
        with http_client(read_timeout_s=timeout_s, connect_timeout_s=timeout_s) as client:
            return int(client.get("/api/models", params={"limit": 1}).status_code)
    except (httpx2.TransportError, OSError) as exc:
        raise HubOfflineError(str(exc) or type(exc).__name__) from None


def translate_error(exc: BaseException, what: str) -> HubError:
    """One clear line for whatever huggingface_hub or httpx2 raised."""
    import httpx2
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubAccessError(
            f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN "
            "to a token of that account"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return HubNotFoundError(f"{what}: no such revision; check --revision")
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return HubNotFoundError(
            f"{what}: no such file in the repository; see 'tui-infer models files'"
        )
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        hint = " (or it is private: set HF_TOKEN)" if not hf_token() else ""
        return HubNotFoundError(f"{what}: no such repository on {endpoint()}{hint}")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubOfflineError("offline (HF_HUB_OFFLINE is set): search and download are off")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return HubAccessError(
                f"{what}: access denied (HTTP {status}); set HF_TOKEN to a token with access"
            )
        return HubError(f"{what}: the hub answered HTTP {status}")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return HubOfflineError(
            f"offline: cannot reach {endpoint()} ({type(exc).__name__}: {exc}); "
            "search and download need the network, everything else works"
        )
    return HubError(f"{what}: {exc}")


def status_error(status: int, headers: Any, what: str) -> HubError:
    code = headers.get("x-error-code", "")
    if code == "GatedRepo" or status in (401, 403):
        if code == "GatedRepo":
            return HubAccessError(
                f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN"
            )
        return HubAccessError(
            f"{what}: access denied (HTTP {status}); set HF_TOKEN to a token with access"
        )
    if status == 404:
        kind = {
            "RepoNotFound": "no such repository",
            "EntryNotFound": "no such file",
            "RevisionNotFound": "no such revision",
        }.get(code, "not found")
        return HubNotFoundError(f"{what}: {kind} (HTTP 404)")
    return HubError(f"{what}: the hub answered HTTP {status}")
