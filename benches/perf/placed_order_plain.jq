# Placed Order + Ordered Product as a consultant might write them in jq in an afternoon: one
# stateless filter, run per line, for the benchmark (benches/perf/run.sh) to time beside
# placed_order.jq (the same-output program) and marketsync.
#
#   jq -c -f benches/perf/placed_order_plain.jq deliveries.ndjson > requests.ndjson
#
# It gives the same events and unique_ids as marketsync, but skips what takes memory or care:
# - no "once per key": every paid invoice sends the whole order's Placed Order (one per seller,
#   where marketsync sends one per order) and its lines' Ordered Products again, as do invoice
#   updates and redeliveries. Klaviyo drops most repeats by unique_id, but not all, and not for free;
# - no schema validation of the bodies;
# - empty fields are sent as null (which clears a profile's field in Klaviyo) rather than left out;
# - emails are trimmed of spaces and lowercased (ASCII), never checked; times are sent as the
#   storefront wrote them, in its offset; lists are deduplicated with jq's `unique` (sorted,
#   case-sensitive) rather than in order of first appearance, case-insensitively;
# - headers are read by their exact name, captures only, marketplace from the header.

def money: . / 100;

def line_fields:
  {
    ProductID: (.advertLegacyId | tostring),
    SKU: .variantSku,
    ProductName: .advertTitle,
    VariantName: .variantName,
    Quantity: .quantity,
    ItemPrice: (.itemAmountCents | money),
    RowTotal: (.totalCents | money),
    ImageURL: .image.url,
    Categories: ((.variant.advert.taxon.treeName // "") | split(" > ")),
    Brand: .brandName
  };

def event($metric; $value; $unique_id; $properties):
  {data: {type: "event", attributes: {
    metric: {data: {type: "metric", attributes: {name: $metric}}},
    profile: {data: {type: "profile", attributes: {
      email: (.order.emailAddress | gsub("^\\s+|\\s+$"; "") | ascii_downcase),
      first_name: .order.firstName,
      last_name: .order.surname
    }}},
    time: .order.createdAt,
    value: $value,
    value_currency: "AUD",
    unique_id: $unique_id,
    properties: $properties
  }}};

def request($mapping; $source; $body):
  {method: "POST", path: "/api/events", body: $body, mapping: $mapping, lane: "transaction", source: $source};

.headers["Marketplacer-Vertical"] as $m
| .body.id as $source
| .body.payload.data.node
| select(.__typename == "Invoice" and (.statusFlags | index("PAID")))
| (.order.legacyId | tostring) as $order_id
| (
    . as $invoice
    | .lineItems[]
    | (.legacyId | tostring) as $line_id
    | . as $line
    | $invoice
    | request("ordered-product"; $source; event("Ordered Product"; ($line.totalCents | money);
        "\($m):ordered-product:\($order_id):\($line_id)";
        {OrderId: $order_id, LineItemId: $line_id, Marketplace: $m, Seller: .seller.businessName}
        + ($line | line_fields)))
  ),
  (
    .order.lineItems.nodes as $lines
    | request("placed-order"; $source; event("Placed Order"; (.order.totalCents | money);
        "\($m):placed-order:\($order_id)";
        {
          OrderId: $order_id,
          Marketplace: $m,
          Sellers: ([.order.invoices.nodes[].seller.businessName] | unique),
          Categories: ([$lines[].variant.advert.taxon.treeName // empty | split(" > ")[]] | unique),
          ItemNames: [$lines[].advertTitle],
          Brands: ([$lines[].brandName // empty] | unique),
          ItemCount: ([$lines[].quantity] | add),
          Items: [$lines[] | line_fields]
        }))
  )
