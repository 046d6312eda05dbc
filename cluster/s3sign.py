"""A PUT signed with the SHA-256 its caller already has, instead of hashing the body again.

SigV4 over plain HTTP signs the payload: botocore reads the whole body back and hashes it for
every ``PutObject`` (``x-amz-content-sha256``). The master has just computed that very hash
(a one-chunk file's chunk is the file, and the file's SHA-256 is its ETag), so a put gives it
as ``PAYLOAD_SHA256`` (hex) and the body is hashed once, not twice: about 70 µs of CPU for
100 KiB on this kind of machine, plus a copy of the body.

The engine hashes what it receives and refuses a PUT whose body does not match the signed
hash, so a wrong value cannot store wrong bytes: the PUT fails.

How: the client takes the extra ``put_object`` argument through botocore's
``provide-client-params`` event (into the request's context), and ``choose-signer`` picks
``KnownPayloadS3Auth`` for such a request, botocore's S3 SigV4 signer that uses the given hash
where it would compute one. Requests without it are signed by botocore's own signer, as before.
"""

from __future__ import annotations

from typing import Any

import botocore.auth

PAYLOAD_SHA256 = "TandemPayloadSha256"  # the extra put_object argument: the body's SHA-256, hex
SIGNER = "tandem-s3v4"  # the name ``KnownPayloadS3Auth`` is registered under
_CONTEXT = "tandem_payload_sha256"


class KnownPayloadS3Auth(botocore.auth.S3SigV4Auth):  # type: ignore[misc]  # no stubs
    """S3 SigV4 with a payload hash given in the request's context."""

    def payload(self, request: Any) -> str:
        known = request.context.get(_CONTEXT)
        if (
            known is None
            or self._is_streaming_checksum_payload(request)
            or not self._should_sha256_sign_payload(request)
        ):
            return str(super().payload(request))
        return str(known)


def _take_hash(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    known = params.pop(PAYLOAD_SHA256, None)
    if known is not None:
        context[_CONTEXT] = known


def _choose(signature_version: Any, context: dict[str, Any], **_: Any) -> str | None:
    """Our signer where botocore would use plain S3 SigV4 and a hash was given; else botocore
    decides (None)."""
    if context.get(_CONTEXT) is not None and signature_version in ("v4", "s3v4"):
        return SIGNER
    return None


def sign_known_payloads(client: Any) -> None:
    """Let ``client`` (an aiobotocore S3 client) take ``PAYLOAD_SHA256`` on ``put_object``."""
    botocore.auth.AUTH_TYPE_MAPS.setdefault(SIGNER, KnownPayloadS3Auth)
    events = client.meta.events
    events.register("provide-client-params.s3.PutObject", _take_hash)
    events.register_first("choose-signer.s3.PutObject", _choose)
