"""Schemathesis hooks for Continuum's API: how to send an `application/sdp`
body (WHIP/WHEP offers are plain text)."""

import schemathesis


@schemathesis.serializer("application/sdp")
def sdp(ctx, value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")
