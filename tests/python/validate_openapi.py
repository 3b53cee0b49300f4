"""Validates an OpenAPI document (JSON on stdin) against the OpenAPI specification's schemas,
with the openapi-spec-validator package. Used by tests/e2e/openapi.rs.
"""

import json
import sys

from openapi_spec_validator import validate

document = json.load(sys.stdin)
try:
    validate(document)
except Exception as e:  # the validator raises its own error types
    sys.exit(f"not a valid OpenAPI document: {e}")
print(f"valid OpenAPI {document['openapi']}")
