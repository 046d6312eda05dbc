"""Endpoint resolution once per bucket, not once per object: a backport of botocore's fix
(boto/botocore#3528, merged as #3692 in 2026) to the botocore that aioboto3 still pins (1.40).

botocore resolves each request's endpoint by evaluating S3's endpoint rule set, and caches the
result keyed on the rule set's parameters. Three of them, ``Key``, ``Prefix`` and
``CopySource``, are declared but never referenced by any rule, and ``Key`` is different on every
object: the cache never hits, and the whole rule tree is evaluated for every PUT and GET, about
a quarter of the client's CPU per request on a small object (py-spy, on this kind of machine).
Dropping the parameters no rule refers to before resolution makes the cache hit, with the same
result: a parameter no rule reads cannot change it.

The unreferenced parameters are found in the client's own rule set when it is opened, not
listed here: a rule set that starts to use ``Key`` keeps it. When the client has not the shape
this expects (another aiobotocore), nothing is changed and the client works as it comes.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

log = structlog.get_logger("cluster")


def unreferenced_params(rule_set: dict[str, Any]) -> set[str]:
    """The parameters ``rule_set`` declares that none of its rules reads."""
    rules = json.dumps(rule_set.get("rules", []))
    return {p for p in rule_set.get("parameters", {}) if f'"ref": {json.dumps(p)}' not in rules}


def cache_endpoints(client: Any, loader: Any) -> set[str]:
    """Make ``client`` (an aiobotocore client) leave the parameters its endpoint rule set never
    reads out of endpoint resolution; those parameters (empty when nothing was changed)."""
    resolver: Any = getattr(client, "_ruleset_resolver", None)
    get_params = getattr(resolver, "_get_provider_params", None)
    model = client.meta.service_model
    try:
        rule_set = loader.load_service_model(
            model.service_name, "endpoint-rule-set-1", api_version=model.api_version
        )
    except Exception as exc:  # the data files of another botocore: leave the client alone
        log.warning("s3.endpoint_cache_off", error=str(exc))
        return set()
    unused = unreferenced_params(rule_set)
    if get_params is None or not unused:
        return set()

    async def provider_params(*args: Any, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = await get_params(*args, **kwargs)
        for name in unused:
            params.pop(name, None)
        return params

    resolver._get_provider_params = provider_params
    return unused
