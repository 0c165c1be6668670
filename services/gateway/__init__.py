"""The HTTP face of pandaes: PanDA's legacy pilot API, the /api/v1 API of panda-client, and the cache.

Stateless by design — every decision is the ledger's, every read is a projection — so any number of
gateway processes can run behind a balancer. ``app.build_app`` assembles the pieces.
"""
