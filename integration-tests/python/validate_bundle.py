"""Validate FHIR JSON resources with the fhir.resources models (pydantic).

Usage: validate_bundle.py {R5|R4B|R4} FILE...   exit 0 when every file validates.

Each file holds one resource of any type (a Bundle, a CapabilityStatement, a Subscription,
...). fhir.resources has no R4 models: R4 is checked with the R4B models, which refuse what
R4 lacks in the elements the hub writes (Parameters.extension, valueInteger64) but know the
R4B-only resource types; the Rust side of the tests checks resource type codes against R4.
"""
import json
import sys


def main() -> int:
    version, files = sys.argv[1], sys.argv[2:]
    if version == "R5":
        from fhir.resources import get_fhir_model_class
    elif version in ("R4B", "R4"):
        from fhir.resources.R4B import get_fhir_model_class
    else:
        print(f"unknown version {version}", file=sys.stderr)
        return 2
    for name in files:
        with open(name) as f:
            data = json.load(f)
        try:
            model = get_fhir_model_class(data.get("resourceType", ""))
            resource = model.model_validate(data)
        except Exception as e:  # pydantic.ValidationError, with every failing field
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        line = f"{name}: valid {version} {resource.__resource_type__}"
        if resource.__resource_type__ == "Bundle" and resource.entry:
            first = resource.entry[0].resource
            line += f" ({resource.type}), first entry {first.__resource_type__}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
