"""Who is calling and what they may do: the gateway's one authentication seam and its role table.

``model`` (Identity, Refused, Authenticator), ``oidc`` (bearer tokens against an issuer's JWKS), ``x509``
(a client DN from a trusted TLS-terminating proxy), ``dev`` (the local issuer of ``make run``),
``policy`` (the role table, as data), ``gate`` (the aiohttp middleware that applies both).
"""
