#!/usr/bin/env python3
"""Placed Order + Ordered Product, written the way an integration consultant would.

The Python baseline of the performance benchmark (benches/perf/run.sh): jsonpath-ng picks the
fields, Jinja2 renders each Klaviyo body as JSON text, jsonschema validates every body against
Klaviyo's schema for POST /api/events (schemas/klaviyo/create_event.json, format checks on),
and the input is streamed line by line.

Validation comes two ways, and the benchmark times both:
- by default, `jsonschema.validate(body, schema)` for each body: the call jsonschema's README
  and "Schema Validation" docs show first, and the one a consultant writes. It checks the
  schema itself against the metaschema and builds a validator every time, which costs about
  twenty times the rest of the script;
- with --compiled-validator, one Draft202012Validator built at start and reused, as
  jsonschema's docs go on to recommend for many instances: the strongest Python baseline. It prints the same request lines, in the same order,
as `marketsync run --dry-run --mappings DIR` with DIR holding only placed-order.yaml,
ordered-product.yaml and settings.yaml.

    python3 benches/perf/placed_order.py [--compiled-validator] deliveries.ndjson > requests.ndjson

Like marketsync, it keeps in memory the delivery ids and once-per keys it has seen, so a
repeated delivery, an invoice update or a multi-seller order's second invoice sends nothing
twice. Captures and bare webhook envelopes only (no backfill pages).
"""

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment
import jsonschema
from jsonpath_ng import parse
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]

# mappings/settings.yaml, as far as these two mappings read it.
SETTINGS = {
    "marketplace": "default",
    "currency": "AUD",
    "metrics": {"placed_order": "Placed Order", "ordered_product": "Ordered Product"},
}

# Selections: compiled once, applied to every invoice.
ORDER_ID = parse("$.order.legacyId")
EMAIL = parse("$.order.emailAddress")
FIRST_NAME = parse("$.order.firstName")
LAST_NAME = parse("$.order.surname")
CREATED_AT = parse("$.order.createdAt")
TOTAL_CENTS = parse("$.order.totalCents")
ORDER_LINES = parse("$.order.lineItems.nodes[*]")
SELLERS = parse("$.order.invoices.nodes[*].seller.businessName")
SELLER = parse("$.seller.businessName")
INVOICE_LINES = parse("$.lineItems[*]")
STATUS_FLAGS = parse("$.statusFlags[*]")
ORDER_STATUS = parse("$.order.status")


def one(path, node):
    found = path.find(node)
    return found[0].value if found else None


def many(path, node):
    return [match.value for match in path.find(node)]


def money(cents):
    """Minor units to major; AUD has two decimals (an exact, correctly rounded division)."""
    return cents / 100


def iso8601(text):
    """A timestamp in UTC, whole seconds, written +00:00 (a naive one is taken as UTC)."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="seconds")


def normalise_email(value):
    """Trimmed (whitespace and <>), "mailto:" dropped, lowercased; None if not an address."""
    if not isinstance(value, str):
        return None
    text = value
    while text and (text[0].isspace() or text[0] in "<>"):
        text = text[1:]
    while text and (text[-1].isspace() or text[-1] in "<>"):
        text = text[:-1]
    while text.startswith("mailto:"):
        text = text[len("mailto:"):]
    text = text.lower()
    local, at, domain = text.partition("@")
    plausible = (
        at
        and local
        and "." in domain
        and not domain.startswith(".")
        and not domain.endswith(".")
        and "@" not in domain
        and not any(c.isspace() for c in text)
    )
    return text if plausible else None


def categories(tree_name):
    return tree_name.split(" > ") if tree_name else []


env = Environment(autoescape=False)
env.filters["money"] = money
env.filters["iso8601"] = iso8601
env.filters["categories"] = categories

# The body templates, as JSON text: values go through `tojson`, empty ones are left out.
LINE_FIELDS = """
  "ProductID": {{ line.advertLegacyId | string | tojson }},
  "SKU": {{ line.variantSku | tojson }},
  "ProductName": {{ line.advertTitle | tojson }},
  {%- if line.variantName %} "VariantName": {{ line.variantName | tojson }},{% endif %}
  "Quantity": {{ line.quantity | tojson }},
  "ItemPrice": {{ line.itemAmountCents | money | tojson }},
  "RowTotal": {{ line.totalCents | money | tojson }},
  {%- if line.image and line.image.url %} "ImageURL": {{ line.image.url | tojson }},{% endif %}
  "Categories": {{ (line.variant.advert.taxon.treeName if line.variant and line.variant.advert
                    and line.variant.advert.taxon else none) | categories | tojson }}
  {%- if line.brandName %}, "Brand": {{ line.brandName | tojson }}{% endif %}
"""

EVENT_HEAD = """
{"data": {"type": "event", "attributes": {
  "metric": {"data": {"type": "metric", "attributes": {"name": {{ metric | tojson }}}}},
  "profile": {"data": {"type": "profile", "attributes": {
    "email": {{ customer_email | tojson }}
    {%- if first_name %}, "first_name": {{ first_name | tojson }}{% endif %}
    {%- if last_name %}, "last_name": {{ last_name | tojson }}{% endif %}
  }}},
  "time": {{ created_at | iso8601 | tojson }},
"""

PLACED_ORDER = env.from_string(
    EVENT_HEAD
    + """
  "value": {{ total_cents | money | tojson }},
  "value_currency": {{ currency | tojson }},
  "unique_id": {{ (marketplace ~ ":placed-order:" ~ order_id) | tojson }},
  "properties": {
    "MarketsyncKey": {{ (marketplace ~ ":placed-order:" ~ order_id) | tojson }},
    "OrderId": {{ order_id | string | tojson }},
    "Marketplace": {{ marketplace | tojson }},
    "Sellers": {{ sellers | unique | list | tojson }},
    "Categories": {{ order_categories | tojson }},
    "ItemNames": {{ lines | map(attribute='advertTitle') | list | tojson }},
    "Brands": {{ lines | map(attribute='brandName') | select | unique | list | tojson }},
    "ItemCount": {{ lines | sum(attribute='quantity') | tojson }},
    "Items": [
      {%- for line in lines %}{{ "," if not loop.first }}{"""
    + LINE_FIELDS
    + """}{% endfor -%}
    ]
  }
}}}
"""
)

ORDERED_PRODUCT = env.from_string(
    EVENT_HEAD
    + """
  "value": {{ line.totalCents | money | tojson }},
  "value_currency": {{ currency | tojson }},
  "unique_id": {{ (marketplace ~ ":ordered-product:" ~ order_id ~ ":" ~ line.legacyId) | tojson }},
  "properties": {
    "MarketsyncKey": {{ (marketplace ~ ":ordered-product:" ~ order_id ~ ":" ~ line.legacyId) | tojson }},
    "OrderId": {{ order_id | string | tojson }},
    "LineItemId": {{ line.legacyId | string | tojson }},
    "Marketplace": {{ marketplace | tojson }},
    {%- if seller %} "Seller": {{ seller | tojson }},{% endif %}
"""
    + LINE_FIELDS
    + """
  }
}}}
"""
)

SCHEMA = json.loads((ROOT / "schemas/klaviyo/create_event.json").read_text(encoding="utf-8"))
FORMATS = Draft202012Validator.FORMAT_CHECKER
COMPILED = Draft202012Validator(SCHEMA, format_checker=FORMATS)


def documented_errors(body):
    """The README's one-liner: raises the first error, if any."""
    try:
        jsonschema.validate(body, SCHEMA, format_checker=FORMATS)
    except jsonschema.ValidationError as error:
        return [error]
    return []


def compiled_errors(body):
    return list(COMPILED.iter_errors(body))


def header(headers, name):
    """A header's value, by name in any case."""
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if key.lower() == name.lower():
            if isinstance(value, list):
                value = value[0] if value else None
            return value if isinstance(value, str) and value.strip() else None
    return None


def record_of(delivery):
    """(delivery id, marketplace, node) of a capture or a bare envelope, else None."""
    if not isinstance(delivery, dict):
        return None
    marketplace = SETTINGS["marketplace"]
    key = None
    if "headers" in delivery and "body" in delivery:
        marketplace = header(delivery["headers"], "Marketplacer-Vertical") or marketplace
        key = header(delivery["headers"], "Idempotency-Key")
        delivery = delivery["body"]
        if isinstance(delivery, str):
            delivery = json.loads(delivery)
    elif "payload" not in delivery and "event_name" not in delivery:
        return None
    node = ((delivery.get("payload") or {}).get("data") or {}).get("node")
    delivery_id = delivery.get("id") or key
    if node is None or delivery_id is None:
        return None
    return delivery_id, marketplace, node


def is_paid(node):
    return "PAID" in many(STATUS_FLAGS, node) or one(ORDER_STATUS, node) == "COMPLETE"


def unique_ci(values):
    """Jinja2's (and minijinja's) `unique`: first occurrence, strings case-insensitively."""
    seen, out = set(), []
    for value in values:
        key = value.lower() if isinstance(value, str) else json.dumps(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def requests(marketplace, node):
    """(mapping, once-per key, body text) of one invoice, ordered-product first."""
    if node.get("__typename") != "Invoice" or not is_paid(node):
        return
    context = {
        "marketplace": marketplace,
        "currency": SETTINGS["currency"],
        "order_id": one(ORDER_ID, node),
        "customer_email": normalise_email(one(EMAIL, node)),
        "first_name": one(FIRST_NAME, node),
        "last_name": one(LAST_NAME, node),
        "created_at": one(CREATED_AT, node),
    }
    if context["customer_email"] is None:
        print(f"rejected: order {context['order_id']}: no valid email", file=sys.stderr)
        return
    seller = one(SELLER, node)
    for line in many(INVOICE_LINES, node):
        key = f"{marketplace}:{context['order_id']}:{line.get('legacyId')}"
        body = ORDERED_PRODUCT.render(
            context, metric=SETTINGS["metrics"]["ordered_product"], seller=seller, line=line
        )
        yield "ordered-product", key, body
    lines = many(ORDER_LINES, node)
    trees = [
        (((line.get("variant") or {}).get("advert") or {}).get("taxon") or {}).get("treeName")
        for line in lines
    ]
    order_categories = unique_ci(part for tree in trees if tree for part in tree.split(" > "))
    body = PLACED_ORDER.render(
        context,
        metric=SETTINGS["metrics"]["placed_order"],
        total_cents=one(TOTAL_CENTS, node),
        sellers=many(SELLERS, node),
        lines=lines,
        order_categories=order_categories,
    )
    yield "placed-order", f"{marketplace}:{context['order_id']}", body


def main(arguments):
    errors_of = documented_errors
    if "--compiled-validator" in arguments:
        errors_of = compiled_errors
    paths = [a for a in arguments if a != "--compiled-validator"]
    seen_deliveries, seen_keys = set(), set()
    out = sys.stdout
    rejected = 0
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for number, text in enumerate(lines, 1):
                if not text.strip():
                    continue
                record = record_of(json.loads(text))
                if record is None:
                    continue
                delivery_id, marketplace, node = record
                if (marketplace, delivery_id) in seen_deliveries:
                    continue
                seen_deliveries.add((marketplace, delivery_id))
                for mapping, key, body_text in requests(marketplace, node):
                    if (mapping, key) in seen_keys:
                        continue
                    body = json.loads(body_text)
                    errors = errors_of(body)
                    if errors:
                        rejected += 1
                        print(f"{path}:{number}: rejected: {mapping}: {errors[0].message}", file=sys.stderr)
                        continue
                    seen_keys.add((mapping, key))
                    request = {
                        "method": "POST",
                        "path": "/api/events",
                        "body": body,
                        "mapping": mapping,
                        "lane": "transaction",
                        "source": delivery_id,
                    }
                    out.write(json.dumps(request, ensure_ascii=False, separators=(",", ":")))
                    out.write("\n")
    out.flush()
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
