"""`pandaes token`: a development token for any identity and roles, from the dev issuer in the state dir.

For pointing the real clients at a local gateway: panda-client with ``PANDA_AUTH=oidc PANDA_AUTH_VO=<vo>
PANDA_AUTH_ID_TOKEN=<token>``, pilot3 with the token in a file named by ``PANDA_AUTH_TOKEN`` and
``PANDA_AUTH_ORIGIN=<vo>``. Only the dev issuer (``[auth] dev_issuer``): production tokens come from the
VO's IAM.
"""

from __future__ import annotations

import argparse
import sys

from core import config


def announce(cfg: config.Config, log=print) -> None:
    """What `make run` prints: where the user, production and pilot tokens are (or that auth is off)."""
    if not cfg.auth.enabled:
        log("AUTH IS OFF ([auth] enabled = false): anyone reaching the gateway may do anything")
        return
    if not cfg.auth.dev_issuer:
        return
    from services.gateway.auth import dev

    paths = dev.ensure_tokens(cfg)
    log(f"dev tokens (VO {cfg.auth.dev_vo!r}): " + "  ".join(f"{name}={path}" for name, path in paths.items()))
    log(f"  panda-client: PANDA_AUTH=oidc PANDA_AUTH_VO={cfg.auth.dev_vo} PANDA_AUTH_ID_TOKEN=$(cat {paths['user']})")
    log(f"  pilot3: PANDA_AUTH_TOKEN={paths['pilot'].name} PANDA_AUTH_DIR={paths['pilot']} "
        f"PANDA_AUTH_ORIGIN={cfg.auth.dev_vo}")


def cmd_token(args: argparse.Namespace) -> int:
    from services.gateway.auth import dev

    cfg = config.load()
    if not cfg.auth.dev_issuer:
        print("no dev issuer ([auth] dev_issuer = false): tokens come from the VO's issuer", file=sys.stderr)
        return 2
    roles = [r for r in args.roles.split(",") if r]
    print(dev.mint(cfg, args.identity, roles, ttl=args.ttl))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("token", help="print a dev-issuer token for an identity and roles")
    p.add_argument("--identity", required=True, help="the token subject: who the gateway records as the actor")
    p.add_argument("--roles", default="user", help="comma-separated PanDA roles: user, production, pilot, admin")
    p.add_argument("--ttl", type=float, default=24 * 3600.0, help="seconds the token is valid")
    p.set_defaults(fn=cmd_token)
