"""Dependencies of the routes: the service context and the admin key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from feddetox.errors import AuthError
from server.service import ServiceContext


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def require_admin(
    request: Request, x_admin_key: Annotated[str | None, Header(description="the coordinator's admin key")] = None
) -> None:
    expected = get_ctx(request).settings.admin_key
    if not x_admin_key or not hmac.compare_digest(x_admin_key.encode(), expected.encode()):
        raise AuthError("missing or wrong X-Admin-Key header; every mutation needs the admin key")


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]
AdminDep = Depends(require_admin)
