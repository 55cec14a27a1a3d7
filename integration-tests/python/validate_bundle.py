"""Validate FHIR JSON with the fhir.resources models (pydantic): R5 or R4B.

Usage: validate_bundle.py {R5|R4B} FILE...   exit 0 when every file validates.
"""
import json
import sys


def main() -> int:
    version, files = sys.argv[1], sys.argv[2:]
    if version == "R5":
        from fhir.resources.bundle import Bundle
    elif version == "R4B":
        from fhir.resources.R4B.bundle import Bundle
    else:
        print(f"unknown version {version}", file=sys.stderr)
        return 2
    for name in files:
        with open(name) as f:
            data = json.load(f)
        try:
            bundle = Bundle.model_validate(data)
        except Exception as e:  # pydantic.ValidationError, with every failing field
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        first = bundle.entry[0].resource
        print(f"{name}: valid {version} Bundle ({bundle.type}), first entry {first.__resource_type__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
