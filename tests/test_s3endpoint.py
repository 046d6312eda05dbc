"""Endpoint resolution once per bucket (``cluster/s3endpoint.py``), on a real aiobotocore
client. Resolving an endpoint sends nothing: no engine is needed (``s3.test`` is never
looked up)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.config import S3Config
from cluster.s3endpoint import unreferenced_params
from cluster.s3store import S3Connection


def test_unreferenced_params_are_found_in_the_rules_themselves() -> None:
    rule_set = {
        "parameters": {"Bucket": {}, "Key": {}, "Region": {}},
        "rules": [{"conditions": [{"fn": "isSet", "argv": [{"ref": "Bucket"}]}],
                   "endpoint": {"url": "{Region}", "properties": {"r": {"ref": "Region"}}}}],
    }
    assert unreferenced_params(rule_set) == {"Key"}
    rule_set["rules"].append({"argv": [{"ref": "Key"}]})  # a rule set that starts to read it
    assert unreferenced_params(rule_set) == set()


@pytest.mark.parametrize("addressing", ["path", "virtual"])
async def test_objects_of_one_bucket_share_one_resolution(addressing: str) -> None:
    cfg = S3Config(bucket="bench", endpoint="http://s3.test:9", region="us-east-1",
                   access_key="a", secret_key="b", addressing=addressing)
    async with S3Connection(cfg) as conn:
        client: Any = conn.client
        resolver = client._ruleset_resolver
        provider = resolver._provider
        calls = []
        resolve = provider.resolve_endpoint

        def counted(**params: Any) -> Any:
            calls.append(params)
            return resolve(**params)

        provider.resolve_endpoint = counted
        urls = set()
        for op, args in [
            ("PutObject", {"Bucket": "bench", "Key": "a/chunk_1"}),
            ("PutObject", {"Bucket": "bench", "Key": "b/chunk_2"}),
            ("GetObject", {"Bucket": "bench", "Key": "c/chunk_3"}),
            ("ListObjectsV2", {"Bucket": "bench", "Prefix": "a/"}),
        ]:
            model = client.meta.service_model.operation_model(op)
            endpoint = await resolver.construct_endpoint(model, args, {})
            urls.add(endpoint.url)
        assert not any({"Key", "Prefix", "CopySource"} & set(p) for p in calls)
        assert len({tuple(sorted(p.items())) for p in calls}) == 1  # one cache entry for all
        expected = "http://s3.test:9/bench" if addressing == "path" else "http://bench.s3.test:9"
        assert urls == {expected}
