# The Placed Order + Ordered Product mapping written in jq, for the performance benchmark
# (benches/perf/run.sh). It gives the same request lines, in the same order, as
#   marketsync run --dry-run --mappings DIR
# where DIR holds only mappings/placed-order.yaml, mappings/ordered-product.yaml and
# mappings/settings.yaml (marketplace "default", currency AUD, the default metric names).
#
#   jq -nc -f benches/perf/placed_order.jq deliveries.ndjson > requests.ndjson
#
# "Once per key" needs memory across lines: Placed Order fires once per order, from whichever
# of its invoices (one per seller) arrives first, and a repeated delivery or an invoice update
# must not send anything twice. So this is one `foreach` over all inputs (hence -n), whose
# state is the set of delivery ids and once-per keys seen, as marketsync keeps them in memory
# for one dry run (a repeated delivery's requests are computed, then all dropped). Without it, a stateless per-line program would send one Placed Order per
# seller and the outputs could not be compared line by line.
#
# Deliberate limits, none of which the benchmark data reaches: captures and bare envelopes only
# (no backfill pages); lines that are not JSON stop jq; emails are lowercased for ASCII only
# (ascii_downcase), as are the case-insensitive `unique`s; timestamps must be
# YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM); money assumes AUD's two minor digits.

def settings: {
  marketplace: "default",
  placed_order: "Placed Order",
  ordered_product: "Ordered Product"
};

# A header's value, by name in any case (as marketsync reads them); the exact spelling first,
# because that is what Marketplacer sends.
def header($name):
  (.[$name] // (($name | ascii_downcase) as $lower
    | [to_entries[] | select(.key | ascii_downcase == $lower) | .value][0]))
  | if type == "array" then .[0] else . end
  | if type == "string" and length > 0 then . else null end;

# A delivery line as {id, marketplace, node}: a capture ({headers, body}) or a bare envelope.
def record:
  if type != "object" then empty
  elif has("headers") and has("body") then
    (.headers | header("Marketplacer-Vertical")) as $vertical
    | (.headers | header("Idempotency-Key")) as $key
    | .body | (if type == "string" then fromjson else . end)
    | {id: (.id // $key), marketplace: ($vertical // settings.marketplace), node: .payload.data.node}
  elif has("payload") or has("event_name") then
    {id, marketplace: settings.marketplace, node: .payload.data.node}
  else empty end
  | select(.id != null and .node != null);

# A leaf that renders to nothing (null, "") is left out of its object.
def prune: with_entries(select(.value != null and .value != ""));

# `| string` in the templates: none stays empty rather than becoming "null".
def str: if . == null then null elif type == "string" then . else tostring end;

# Minor units to major: AUD has two decimals. Division of an integer by 100 is correctly
# rounded, so it prints as the exact decimal, as marketsync's `money` does.
def money: . / 100;

# Trimmed (spaces and <>), "mailto:" dropped, lowercased; null if not plausibly one address.
def email:
  if type != "string" then null
  else sub("^[\\s<>]+"; "") | sub("[\\s<>]+$"; "")
    | until(startswith("mailto:") | not; ltrimstr("mailto:"))
    | ascii_downcase
    | if test("^[^@\\s]+@[^@\\s]+$") and (split("@")[1] | test("\\.") and (startswith(".") or endswith(".") | not))
      then . else null end
  end;

# A timestamp to UTC, whole seconds, written +00:00 like marketsync's `iso8601`.
def iso8601:
  (.[19:] | sub("^\\.[0-9]+"; "")) as $zone
  | (if $zone == "Z" or $zone == "" then 0
     else ($zone[1:3] | tonumber) * 3600 + ($zone[4:6] | tonumber) * 60
       | if $zone[0:1] == "-" then -. else . end
     end) as $offset
  | (.[0:19] + "Z" | fromdate) - $offset | todate | .[0:19] + "+00:00";

# minijinja's `unique`: first occurrence kept, strings compared case-insensitively.
def unique_ci:
  reduce .[] as $x ({seen: {}, out: []};
    ($x | if type == "string" then "s" + ascii_downcase else tojson end) as $k
    | if .seen[$k] then . else .seen[$k] = true | .out += [$x] end)
  | .out;

def tree_name: .variant.advert.taxon.treeName;
def line_categories: tree_name as $t | if $t != null and $t != "" then $t | split(" > ") else [] end;

# The fields a line contributes to both events.
def line_fields:
  {
    ProductID: (.advertLegacyId | str),
    SKU: .variantSku,
    ProductName: .advertTitle,
    VariantName: .variantName,
    Quantity: .quantity,
    ItemPrice: (.itemAmountCents | money),
    RowTotal: (.totalCents | money),
    ImageURL: .image.url,
    Categories: line_categories,
    Brand: .brandName
  };

def paid: any((.statusFlags // [])[]; . == "PAID") or .order.status == "COMPLETE";

def event($metric; $profile; $time; $value; $unique_id; $properties):
  {data: {type: "event", attributes: {
    metric: {data: {type: "metric", attributes: {name: $metric}}},
    profile: {data: {type: "profile", attributes: $profile}},
    time: $time,
    value: $value,
    value_currency: "AUD",
    unique_id: $unique_id,
    properties: $properties
  }}};

def line_out($mapping; $source; $body):
  {method: "POST", path: "/api/events", body: $body, mapping: $mapping, lane: "transaction", source: $source};

# The requests of one record, each with its once-per key, in marketsync's order (mappings by
# file name: ordered-product, then placed-order).
def requests:
  .marketplace as $m | .id as $source | .node as $n
  | select($n.__typename == "Invoice" and ($n | paid))
  | $n.order as $o
  | ($o.emailAddress | email) as $email
  | select($email != null)
  | ({email: $email, first_name: $o.firstName, last_name: $o.surname} | prune) as $profile
  | ($o.createdAt | iso8601) as $time
  | ($o.legacyId | str) as $order_id
  | (
      # ordered-product: one per line item of this invoice (this seller's lines)
      $n.lineItems[]
      | (.legacyId | str) as $line_id
      | {
          key: "ordered-product\u001f\($m):\($order_id):\($line_id)",
          line: line_out("ordered-product"; $source; event(settings.ordered_product; $profile; $time;
            (.totalCents | money); "\($m):ordered-product:\($order_id):\($line_id)";
            ({MarketsyncKey: "\($m):ordered-product:\($order_id):\($line_id)",
              OrderId: $order_id, LineItemId: $line_id, Marketplace: $m, Seller: $n.seller.businessName}
             + line_fields | prune)))
        }
    ),
    (
      # placed-order: the whole order (every seller's lines), once per order
      $o.lineItems.nodes as $lines
      | {
          key: "placed-order\u001f\($m):\($order_id)",
          line: line_out("placed-order"; $source; event(settings.placed_order; $profile; $time;
            ($o.totalCents | money); "\($m):placed-order:\($order_id)";
            {
              MarketsyncKey: "\($m):placed-order:\($order_id)",
              OrderId: $order_id,
              Marketplace: $m,
              Sellers: ([$o.invoices.nodes[].seller.businessName] | unique_ci),
              Categories: ([$lines[] | tree_name | select(. != null and . != "") | split(" > ")[]] | unique_ci),
              ItemNames: [$lines[].advertTitle],
              Brands: ([$lines[].brandName | select(. != null and . != "")] | unique_ci),
              ItemCount: (reduce $lines[] as $l (0; . + $l.quantity)),
              Items: [$lines[] | line_fields | prune]
            } | prune))
        }
    );

# The state is one flat object: every delivery id and once-per key seen (value true), plus the
# current record's output lines under "" (no key is empty). It is flat and only ever changed by
# top-level setpath, and the loop over a record's requests is a recursion rather than a reduce,
# because jq 1.6 copies a container whenever another reference to it is alive: a nested
# `.seen[$k] = true`, or a reduce whose generator still holds the state, would copy the whole
# seen-set for every delivery and make the run quadratic (4.2 s instead of 2.8 s on 100 MB).
def keep_new($requests; $i):
  if $i == ($requests | length) then .
  else $requests[$i] as $q
    | (if .[$q.key] then . else setpath([$q.key]; true) | setpath([""]; .[""] + [$q.line]) end)
    | keep_new($requests; $i + 1)
  end;

foreach (inputs | record | [., [requests]]) as [$r, $requests] (
  {"": []};
  setpath([""]; [])
  | "delivery\u001f\($r.marketplace)\u001f\($r.id)" as $delivery
  | if .[$delivery] then . else setpath([$delivery]; true) | keep_new($requests; 0) end;
  .[""][]
)
