#!/usr/bin/env python3
"""Checks recorded responses of a running service against its OpenAPI document, with
validators nobody in this project wrote: the document with openapi-spec-validator, each
response body with openapi-schema-validator's OpenAPI 3.1 validator.

usage: validate-openapi.py DOCUMENT RECORDS

RECORDS is a JSON list of {"operation": operationId, "status": int, "body": any} (a
text answer is a JSON string, an empty one null). A record's body must validate against
the schema the document declares for its operation and status (or its `default`
response; JSON content, else the one content declared); a status the document does not
declare fails.
Prints one line per record; exits 1 if any record fails, 2 if the document is invalid.
"""

import json
import sys

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec


def main() -> int:
    doc_path, records_path = sys.argv[1], sys.argv[2]
    with open(doc_path, encoding="utf-8") as f:
        doc = json.load(f)
    with open(records_path, encoding="utf-8") as f:
        records = json.load(f)
    try:
        validate_spec(doc)
    except Exception as e:  # noqa: BLE001 - any failure of the document is reported
        print(f"invalid document {doc_path}: {e}")
        return 2
    operations = {}
    for item in doc["paths"].values():
        for method, op in item.items():
            if isinstance(op, dict) and "operationId" in op:
                operations[op["operationId"]] = op
    failures = 0
    for r in records:
        op = operations.get(r["operation"])
        where = f'{r["operation"]} {r["status"]}'
        if op is None:
            print(f"FAIL {where}: no such operation")
            failures += 1
            continue
        response = op["responses"].get(str(r["status"])) or op["responses"].get("default")
        if response is None:
            print(f"FAIL {where}: status not declared")
            failures += 1
            continue
        content = response.get("content", {})
        media = content.get("application/json") or next(iter(content.values()), {})
        schema = media.get("schema")
        if schema is None:
            if r["body"] is not None:
                print(f"FAIL {where}: a body where none is declared")
                failures += 1
            else:
                print(f"ok   {where} (no body)")
            continue
        # References (#/components/...) resolve against a root that carries the
        # document's components.
        root = dict(schema, components=doc.get("components", {}))
        errors = sorted(OAS31Validator(root).iter_errors(r["body"]), key=str)
        if errors:
            print(f"FAIL {where}: {errors[0].message} at {list(errors[0].absolute_path)}")
            failures += 1
        else:
            print(f"ok   {where}")
    print(f"{len(records) - failures} of {len(records)} responses match {doc_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
