"""The API fuzzed from its own OpenAPI description (schemathesis): a bounded, derandomised number of examples
per operation, valid and invalid ones; no 500s, and every answer has a documented status, content type and
body shape, and invalid input is refused."""

from __future__ import annotations

import pytest

from test_server_common import quickstart_library

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,  # noqa: E402
                                               response_schema_conformance, status_code_conformance)

from clipsearch import Reader  # noqa: E402
from clipsearch.server import create_app  # noqa: E402

EXAMPLES = {"/api/search": 150, "/api/search/image": 30}  # per operation and mode; others: DEFAULT_EXAMPLES
DEFAULT_EXAMPLES = 50
OPERATIONS = [("GET", "/api/search"), ("POST", "/api/search/image"), ("GET", "/api/images/{image_id}"),
              ("GET", "/api/images/{image_id}/thumb"), ("GET", "/api/images/{image_id}/original"),
              ("GET", "/api/status")]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    reader = Reader.open(quickstart_library(tmp_path_factory))
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(reader, thumbs_dir=tmp / "thumbs", upload_dir=tmp / "uploads", upload_max_bytes=256 * 1024,
                     allowed_hosts=("testserver",))  # the in-process client's name
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    reader.close()


def test_every_operation_is_fuzzed(api_schema):
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# invalid input exists only where the description constrains something (ids and status take any string)
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if p in ("/api/search", "/api/search/image",
                                                                      "/api/images/{image_id}/thumb")]


@pytest.mark.parametrize("method, path, mode", CASES)
def test_api_answers_generated_requests_without_a_server_error(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES.get(path, DEFAULT_EXAMPLES), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance, negative_data_rejection])

    run()
