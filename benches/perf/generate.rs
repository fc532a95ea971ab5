//! Writes realistic Marketplacer webhook deliveries as NDJSON for the performance benchmark
//! (`benches/perf/run.sh`), deterministically from a seed.
//!
//! ```sh
//! cargo run --release --example generate-deliveries -- --seed 42 --size 100MB --out FILE
//! cargo run --release --example generate-deliveries -- --seed 42 --count 1000 > FILE
//! cargo run --release --example generate-deliveries -- --count 120000 --paid-invoices-only > FILE
//! ```
//!
//! Each line is a capture as a receiver stores it (`{"received_at", "headers", "body"}`, the
//! marketplace in the `Marketplacer-Vertical` header), whose body is the webhook envelope
//! `{"id", "event_name", "payload": {"data": {"node"}}}` with the node shaped by
//! `../shared/reference/marketplacer/modelled/webhook-queries.graphql`:
//!
//! - about 70% Invoice captures of multi-seller orders: 1 to 3 sellers, 1 to 3 lines each, one
//!   invoice per seller, each carrying the whole order. About 4% of orders are unpaid (payment
//!   under review: nothing to map); about 4% of invoice deliveries are `update`s of an earlier
//!   paid invoice and 1% exact redeliveries (same envelope id), so "once per key" has work to do;
//! - about 20% Shipments and 10% RefundRequests of recent paid orders (some still awaiting
//!   approval, some cancelling lines before dispatch).
//!
//! Nodes carry exactly the fields the modelled queries select, so an invoice delivery is about
//! 5 to 7 KB (one NDJSON line), as real ones are. Names are non-ASCII where people's are
//! (Zoë Ångström, Łukasz, 王芳); titles carry emoji and the characters JSON must escape.
//! Emails are ASCII but arrive in mixed case and with stray spaces, as checkout forms send them.
//!
//! With `--paid-invoices-only` every delivery is a new paid invoice (each order's invoices in
//! turn, unpaid orders left out): every one is a distinct delivery that queues work, as the
//! receiver's benchmark (`benches/serve/run.sh`) needs to count "each stored once".
//!
//! The shape of orders can be changed (`--sellers`, `--lines`, `--tags`, `--metadata`,
//! `--title-words`), so the benchmark can show how the cost grows with what a delivery carries
//! (issue 18). Left at their defaults, the options draw no random numbers of their own: the
//! output is byte for byte what it was before they existed, and so are the figures taken on it.
//! Marketplacer's webhook queries select no tags field, so tags come as what storefronts keep
//! them in, order metadata (`{"key": "tag", "value": ...}`).
//!
//! Every order is rebuilt from `(seed, order number)` alone, so shipments and refunds of earlier
//! orders need no memory of them: the output is streamed with constant memory whatever its size.
//!
//! With `--start T --span 24h --count N` the output is "a day": the N deliveries are spread
//! evenly (with jitter) over the window, and every time they carry (placed, paid, updated,
//! dispatched, refund requested and refunded, received) falls inside it, so a reconciliation
//! over exactly that window expects every fact in the file. The same file feeds `serve` (as
//! webhooks, `marketsync replay`) and the Marketplacer stand-in (as the API,
//! `marketsync standin marketplacer --data`). Without `--span` the output is what it always was.

// The invoice node is one large `json!` literal, deeper than the macro's default limit.
#![recursion_limit = "256"]

use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, TimeZone, Utc};
use clap::Parser;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Writes realistic Marketplacer webhook deliveries (NDJSON) from a seed")]
struct Args {
    /// Seed of the generator: the same seed and size give byte-identical output.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop once this much has been written: 100MB, 1GB, 512KB (powers of 1000), 1GiB, or bytes.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Stop after this many deliveries.
    #[arg(long)]
    count: Option<u64>,
    /// Output file; standard output when left out.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The marketplace (vertical) named in every capture's `Marketplacer-Vertical` header.
    #[arg(long, default_value = "petmarket")]
    marketplace: String,
    /// Only new paid invoices: no unpaid orders, updates, redeliveries, shipments or refunds.
    #[arg(long)]
    paid_invoices_only: bool,
    /// Where the clock starts (RFC 3339, with its offset). Default 2026-03-01T00:00:00Z.
    #[arg(long, value_parser = parse_start)]
    start: Option<DateTime<Utc>>,
    /// Spread the deliveries over this long from --start (24h, 90m, 3600s), every time they
    /// carry inside the window. Needs --count.
    #[arg(long, value_parser = parse_span, requires = "count")]
    span: Option<Duration>,
    #[command(flatten)]
    shape: Shape,
}

/// How much an order carries. Each count is drawn per order (per invoice for lines, per line
/// for title words), evenly from `MIN..MAX` (or exactly `N`).
#[derive(clap::Args, Clone, Copy)]
struct Shape {
    /// Sellers in an order, so invoices (each carrying the whole order): MIN..MAX, at most 9.
    #[arg(long, default_value = "1..3", value_parser = parse_count)]
    sellers: Count,
    /// Lines in an invoice: MIN..MAX, at most 9.
    #[arg(long, default_value = "1..3", value_parser = parse_count)]
    lines: Count,
    /// Tags on an order (as metadata entries keyed "tag", non-ASCII among them): MIN..MAX.
    #[arg(long, default_value = "0", value_parser = parse_count)]
    tags: Count,
    /// Metadata entries on an order besides checkout_channel and accepts_marketing: MIN..MAX.
    #[arg(long, default_value = "0", value_parser = parse_count)]
    metadata: Count,
    /// Words added to every advert title, for longer texts: MIN..MAX.
    #[arg(long, default_value = "0", value_parser = parse_count)]
    title_words: Count,
}

/// A count drawn evenly from `min..=max`.
#[derive(Clone, Copy)]
struct Count {
    min: usize,
    max: usize,
}

impl Count {
    /// The count for one order (or invoice, or line). A fixed zero draws nothing, so options
    /// left at zero do not move the random numbers everything else is drawn from.
    fn draw(self, rng: &mut Xoshiro256PlusPlus) -> usize {
        if self.max == 0 {
            return 0;
        }
        rng.random_range(self.min..=self.max)
    }
}

fn parse_count(text: &str) -> Result<Count, String> {
    let number = |n: &str| {
        n.trim()
            .parse::<usize>()
            .map_err(|_| format!("{text:?} is not a count (N or MIN..MAX)"))
    };
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (number(min)?, number(max)?),
        None => (number(text)?, number(text)?),
    };
    if min > max {
        return Err(format!("{text:?}: the minimum is above the maximum"));
    }
    Ok(Count { min, max })
}

fn parse_start(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time with an offset: {e}"))
}

fn parse_span(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a span (24h, 90m, 3600s)"))?;
    let span = match unit {
        "d" => Duration::days(number),
        "h" => Duration::hours(number),
        "m" => Duration::minutes(number),
        "s" | "" => Duration::seconds(number),
        other => return Err(format!("unknown span unit {other:?}: use d, h, m or s")),
    };
    if span <= Duration::zero() {
        return Err("the span must be positive".into());
    }
    Ok(span)
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let factor: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    Ok((number * factor) as u64)
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    // Ids leave one decimal digit for an order's invoices and one for an invoice's lines.
    for (name, count) in [
        ("--sellers", args.shape.sellers),
        ("--lines", args.shape.lines),
    ] {
        if count.min == 0 || count.max > 9 {
            eprintln!("{name}: between 1 and 9");
            std::process::exit(2);
        }
    }
    let limit_bytes = match (args.size, args.count) {
        (None, None) => Some(100_000_000),
        (size, _) => size,
    };
    let sink: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(io::stdout().lock()),
    };
    let mut out = Counting {
        inner: BufWriter::with_capacity(1 << 20, sink),
        bytes: 0,
    };
    let mut generator = Generator::new(args.seed, args.marketplace, args.shape);
    if let Some(start) = args.start {
        generator.clock = start;
    }
    if let (Some(span), Some(count)) = (args.span, args.count) {
        generator.window = Some(Window {
            start: generator.clock,
            span,
            count,
        });
    }
    let mut kinds = [0u64; 6];
    let mut deliveries = 0u64;
    while limit_bytes.is_none_or(|limit| out.bytes < limit)
        && args.count.is_none_or(|count| deliveries < count)
    {
        let (kind, delivery) = if args.paid_invoices_only {
            generator.next_paid_invoice()
        } else {
            generator.next_delivery()
        };
        serde_json::to_writer(&mut out, &delivery)?;
        out.write_all(b"\n")?;
        kinds[kind as usize] += 1;
        deliveries += 1;
    }
    out.flush()?;
    eprintln!(
        "wrote {deliveries} deliveries, {} bytes: {} paid invoices, {} unpaid, {} invoice updates, {} redeliveries, {} shipments, {} refund requests",
        out.bytes, kinds[0], kinds[1], kinds[2], kinds[3], kinds[4], kinds[5]
    );
    Ok(())
}

/// A writer that counts what passes through it, so the size limit needs no `stat`.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    PaidInvoice,
    UnpaidInvoice,
    InvoiceUpdate,
    Redelivery,
    Shipment,
    Refund,
}

/// A paid invoice delivered earlier, remembered (by numbers only) so that shipments, refunds,
/// updates and redeliveries can refer to it.
#[derive(Clone, Copy)]
struct Delivered {
    order: u64,
    invoice: usize,
    sequence: u64,
    received: DateTime<Utc>,
    /// When its order was placed, so a rebuilt order carries the same times.
    placed: DateTime<Utc>,
}

/// How many recent paid invoices later events pick from: bounds memory, keeps events plausible
/// (a shipment follows its order within hours, not months).
const RECENT: usize = 2048;

/// The window a day's deliveries are spread over.
#[derive(Clone, Copy)]
struct Window {
    start: DateTime<Utc>,
    span: Duration,
    count: u64,
}

struct Generator {
    seed: u64,
    shape: Shape,
    /// With a window, each delivery's time is drawn inside its own slice of it.
    window: Option<Window>,
    /// Deliveries so far, for the window's slices.
    delivered: u64,
    marketplace: String,
    rng: Xoshiro256PlusPlus,
    clock: DateTime<Utc>,
    sequence: u64,
    next_order: u64,
    /// The order whose invoices are being delivered, and the next of them.
    current: Option<(Order, usize)>,
    recent: VecDeque<Delivered>,
    next_shipment: u64,
    next_refund: u64,
}

impl Generator {
    fn new(seed: u64, marketplace: String, shape: Shape) -> Generator {
        Generator {
            seed,
            shape,
            window: None,
            delivered: 0,
            marketplace,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            clock: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            sequence: 40_000,
            next_order: 0,
            current: None,
            recent: VecDeque::with_capacity(RECENT),
            next_shipment: 60_000,
            next_refund: 70_000,
        }
    }

    /// Moves the clock to the next delivery: 2 to 40 seconds on, or inside the next slice of
    /// the window (strictly increasing, never past its end).
    fn tick(&mut self) {
        match self.window {
            None => self.clock += Duration::milliseconds(self.rng.random_range(2_000..40_000)),
            Some(window) => {
                let slice = window.span.num_milliseconds() as f64 / window.count as f64;
                let at = (self.delivered as f64 + self.rng.random_range(0.0..1.0)) * slice;
                let at = window.start + Duration::milliseconds(at as i64);
                self.clock = at.max(self.clock + Duration::milliseconds(1));
            }
        }
        self.delivered += 1;
    }

    /// `at`, or the window's start when it falls before it.
    fn in_window(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        match self.window {
            Some(window) => at.max(window.start),
            None => at,
        }
    }

    fn next_delivery(&mut self) -> (Kind, Value) {
        self.tick();
        self.sequence += 1;
        let draw: f64 = self.rng.random();
        if self.recent.is_empty() || draw < 0.70 {
            let draw: f64 = self.rng.random();
            if draw < 0.04 && !self.recent.is_empty() {
                return (Kind::InvoiceUpdate, self.invoice_update());
            }
            if draw < 0.05 && !self.recent.is_empty() {
                return (Kind::Redelivery, self.redelivery());
            }
            return self.next_invoice();
        }
        let earlier = self.recent[self.rng.random_range(0..self.recent.len())];
        if draw < 0.90 {
            (Kind::Shipment, self.shipment(earlier))
        } else {
            (Kind::Refund, self.refund(earlier))
        }
    }

    /// The next invoice of a paid order, on the same clock and sequence as every delivery.
    fn next_paid_invoice(&mut self) -> (Kind, Value) {
        loop {
            self.tick();
            self.sequence += 1;
            let (kind, delivery) = self.next_invoice();
            if let Kind::PaidInvoice = kind {
                return (kind, delivery);
            }
        }
    }

    fn order(&self, n: u64) -> Order {
        Order::build(self.seed, n, self.shape)
    }

    /// The next invoice of the order being delivered, starting a new order when it is done.
    fn next_invoice(&mut self) -> (Kind, Value) {
        let (order, index) = match self.current.take() {
            Some((order, index)) if index < order.invoices.len() => (order, index),
            _ => {
                let n = self.next_order;
                self.next_order += 1;
                let mut order = self.order(n);
                // Orders are placed as they are delivered: the clock decides the time.
                let placed = self.clock - Duration::seconds(self.rng.random_range(3..30));
                order.place_at(self.in_window(placed));
                (order, 0)
            }
        };
        let received = self.clock;
        let node = order.invoice_node(index, false);
        let delivery = self.capture(self.sequence, received, "create", node);
        let kind = if order.paid {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(Delivered {
                order: order.n,
                invoice: index,
                sequence: self.sequence,
                received,
                placed: order.created_utc,
            });
            Kind::PaidInvoice
        } else {
            Kind::UnpaidInvoice
        };
        self.current = Some((order, index + 1));
        (kind, delivery)
    }

    /// An earlier paid invoice sent again as an `update` (now also SENT), with its own envelope.
    fn invoice_update(&mut self) -> Value {
        let earlier = self.recent[self.rng.random_range(0..self.recent.len())];
        let order = self.placed(earlier);
        let mut node = order.invoice_node(earlier.invoice, true);
        if self.window.is_some() {
            // Updated when it is delivered at the latest, so inside the window.
            let updated = (order.created_utc + Duration::hours(3)).min(self.clock);
            node["updatedAt"] = order.local(updated).into();
            node["order"]["updatedAt"] = order.local(updated).into();
        }
        self.capture(self.sequence, self.clock, "update", node)
    }

    /// An earlier delivery received a second time: same envelope id, same Idempotency-Key.
    fn redelivery(&mut self) -> Value {
        let earlier = self.recent[self.rng.random_range(0..self.recent.len())];
        let order = self.placed(earlier);
        let node = order.invoice_node(earlier.invoice, false);
        let mut delivery = self.capture(earlier.sequence, earlier.received, "create", node);
        delivery["received_at"] = millis(self.clock).into();
        delivery
    }

    /// An earlier order rebuilt with the time it was placed at.
    fn placed(&self, earlier: Delivered) -> Order {
        let mut order = self.order(earlier.order);
        order.place_at(earlier.placed);
        order
    }

    fn shipment(&mut self, earlier: Delivered) -> Value {
        let order = self.placed(earlier);
        let invoice = &order.invoices[earlier.invoice];
        let id = self.next_shipment;
        self.next_shipment += 1;
        let dispatched = self.clock - Duration::minutes(self.rng.random_range(5..240));
        let dispatched = dispatched.max(order.created_utc + Duration::minutes(1));
        let (carrier, tracking, link) = match self.rng.random_range(0..3) {
            0 => {
                let number = format!("33QJQ5{:017}", self.rng.random_range(0..10u64.pow(17)));
                let link = format!("https://auspost.com.au/mypost/track/details/{number}");
                ("Australia Post", number, link)
            }
            1 => {
                let number = format!("SGX{:09}", self.rng.random_range(0..10u64.pow(9)));
                let link = format!("https://www.sendle.com/tracking?ref={number}");
                ("Sendle", number, link)
            }
            _ => {
                let number = format!("NZP{:010}", self.rng.random_range(0..10u64.pow(10)));
                let link = format!("https://www.nzpost.co.nz/tools/tracking/item/{number}");
                ("NZ Post", number, link)
            }
        };
        let shipped: Vec<Value> = invoice
            .lines
            .iter()
            .map(|line| {
                json!({
                    "id": gid("ShippedItem", id * 10 + line.index as u64),
                    "quantity": line.quantity,
                    "lineItem": {
                        "id": gid("LineItem", line.legacy_id),
                        "legacyId": line.legacy_id,
                        "advertTitle": line.title,
                        "brandName": line.brand,
                        "variantName": line.variant_name,
                        "variantSku": line.sku,
                        "totalCents": line.total_cents,
                    }
                })
            })
            .collect();
        let at = order.local(dispatched);
        let node = json!({
            "__typename": "Shipment",
            "id": gid("Shipment", id),
            "legacyId": id,
            "createdAt": at,
            "updatedAt": at,
            "dispatchedAt": at,
            "carrier": carrier,
            "trackingNumber": tracking,
            "trackingLink": link,
            "shippedItems": shipped,
            "invoice": {
                "id": gid("Invoice", invoice.legacy_id),
                "legacyId": invoice.legacy_id,
                "statusFlags": ["PAID", "SENT"],
                "seller": {"legacyId": invoice.seller.0, "businessName": invoice.seller.1},
                "order": {
                    "id": gid("Order", order.legacy_id),
                    "legacyId": order.legacy_id,
                    "emailAddress": order.email,
                    "firstName": order.first_name,
                    "surname": order.surname,
                    "phone": order.phone,
                    "totalCents": order.total_cents(),
                }
            }
        });
        self.capture(self.sequence, self.clock, "create", node)
    }

    fn refund(&mut self, earlier: Delivered) -> Value {
        let order = self.placed(earlier);
        let invoice = &order.invoices[earlier.invoice];
        let id = self.next_refund;
        self.next_refund += 1;
        // Most refund deliveries are the completing update; some are still awaiting approval.
        let refunded = self.rng.random_bool(0.8);
        // Lines refunded before dispatch are cancellations.
        let dispatched = self.rng.random_bool(0.7);
        let count = self.rng.random_range(1..=invoice.lines.len());
        let reasons = [
            "Damaged in transit",
            "Changed my mind",
            "Wrong size — too small",
            "Not as described",
            "Arrived late 😞",
            "Out of stock — cancelled by seller before dispatch",
        ];
        let mut total = 0;
        let lines: Vec<Value> = invoice.lines[..count]
            .iter()
            .map(|line| {
                let quantity = self.rng.random_range(1..=line.quantity);
                let amount = line.item_cents * quantity;
                total += amount;
                let reason = if dispatched {
                    reasons[self.rng.random_range(0..5)]
                } else {
                    reasons[5]
                };
                json!({
                    "id": gid("RefundRequestLineItem", id * 10 + line.index as u64),
                    "legacyId": id * 10 + line.index as u64,
                    "quantity": quantity,
                    "reason": reason,
                    "dispatched": dispatched,
                    "status": if refunded { "REFUNDED" } else { "PENDING_APPROVAL" },
                    "amountCents": amount,
                    "amountPerItemCents": line.item_cents,
                    "lineItem": {
                        "id": gid("LineItem", line.legacy_id),
                        "legacyId": line.legacy_id,
                        "advertTitle": line.title,
                        "brandName": line.brand,
                        "variantSku": line.sku,
                    }
                })
            })
            .collect();
        let created = self.clock - Duration::hours(self.rng.random_range(1..48));
        let created = match self.window {
            // Inside the window, and never before the order.
            Some(_) => self.in_window(created).max(order.created_utc),
            None => created,
        };
        let created = order.local(created);
        let now = order.local(self.clock);
        let node = json!({
            "__typename": "RefundRequest",
            "id": gid("RefundRequest", id),
            "legacyId": id,
            "status": if refunded { "REFUNDED" } else { "AWAITING" },
            "initiatedBy": if dispatched { "BUYER" } else { "SELLER" },
            "createdAt": created,
            "updatedAt": now,
            "refundedAt": if refunded { Value::from(now.clone()) } else { Value::Null },
            "refundAmountCents": total,
            "cashAmountCents": total,
            "totalCents": total,
            "lineItems": lines,
            "invoice": {
                "id": gid("Invoice", invoice.legacy_id),
                "legacyId": invoice.legacy_id,
                "seller": {"legacyId": invoice.seller.0, "businessName": invoice.seller.1},
                "order": {
                    "id": gid("Order", order.legacy_id),
                    "legacyId": order.legacy_id,
                    "emailAddress": order.email,
                    "firstName": order.first_name,
                    "surname": order.surname,
                }
            }
        });
        let event = if refunded { "update" } else { "create" };
        self.capture(self.sequence, self.clock, event, node)
    }

    /// Wraps a node in the webhook envelope and the receiver's capture of it.
    fn capture(&self, sequence: u64, received: DateTime<Utc>, event: &str, node: Value) -> Value {
        // The Idempotency-Key is a function of the sequence, so a redelivery repeats it.
        let mut key_rng = Xoshiro256PlusPlus::seed_from_u64(self.seed ^ sequence.rotate_left(32));
        let key: [u8; 16] = key_rng.random();
        json!({
            "received_at": millis(received),
            "headers": {
                "Idempotency-Key": uuid(key),
                "Marketplacer-Sequence": sequence.to_string(),
                "Marketplacer-Vertical": self.marketplace,
                "Content-Type": "application/json",
            },
            "body": {
                "id": gid("WebhookEvent", sequence),
                "event_name": event,
                "payload": {"data": {"node": node}},
            }
        })
    }
}

/// One order, rebuilt identically from `(seed, n)` whenever it is needed.
struct Order {
    n: u64,
    legacy_id: u64,
    paid: bool,
    /// When the order was placed, in UTC, and the storefront's offset its times are written in.
    created_utc: DateTime<Utc>,
    offset: FixedOffset,
    email: String,
    first_name: &'static str,
    surname: Option<&'static str>,
    phone: Option<String>,
    address: Value,
    metadata: Value,
    external_ids: Value,
    invoices: Vec<Invoice>,
}

struct Invoice {
    legacy_id: u64,
    seller: (u64, &'static str),
    shipping_cents: u64,
    lines: Vec<Line>,
}

struct Line {
    index: usize,
    legacy_id: u64,
    quantity: u64,
    item_cents: u64,
    discount_cents: u64,
    total_cents: u64,
    title: String,
    brand: Option<&'static str>,
    variant_name: Option<&'static str>,
    sku: String,
    /// The full `LineItemFields` object, 5 to 7 KB.
    json: Value,
}

impl Order {
    fn build(seed: u64, n: u64, shape: Shape) -> Order {
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let rng = &mut rng;
        let legacy_id = 500_000 + n;
        let (first_name, surname, local) = *pick(rng, PEOPLE);
        let surname = (!rng.random_bool(0.05)).then_some(surname);
        let email = noisy_email(rng, local, n);
        let (street, city, postcode, state, short, country, country_name) = *pick(rng, PLACES);
        // Phones as buyers type them, in their country's formats; a few missing or unreadable.
        let phone = match (rng.random_range(0..20), country) {
            (0, _) => None,
            (1, _) => Some("12345".to_owned()),
            (_, "NZ") => Some(format!(
                "02{} {:03} {:04}",
                pick(rng, &[1, 2, 7]),
                rng.random_range(0..1000),
                rng.random_range(0..10_000)
            )),
            (2, _) => Some(format!(
                "+61 2 9{:03} {:04}",
                rng.random_range(0..1000),
                rng.random_range(0..10_000)
            )),
            (3, _) => Some(format!(
                "(04) {:02}{:02}-{:04}",
                rng.random_range(10..40),
                rng.random_range(0..100),
                rng.random_range(0..10_000)
            )),
            _ => Some(format!(
                "04{:02} {:03} {:03}",
                rng.random_range(10..40),
                rng.random_range(0..1000),
                rng.random_range(0..1000)
            )),
        };
        let address = json!({
            "address": format!("{} {street}", rng.random_range(1..250)),
            "subaddress": if rng.random_bool(0.3) { Value::from(format!("Unit {}", rng.random_range(1..40))) } else { Value::Null },
            "city": city,
            "postcode": postcode,
            "state": {"name": state, "short": short},
            "country": {"code": country, "name": country_name},
        });
        let mut metadata = vec![
            json!({"key": "checkout_channel", "value": *pick(rng, &["web", "ios_app", "android_app"])}),
        ];
        match rng.random_range(0..3) {
            0 => metadata.push(json!({"key": "accepts_marketing", "value": "yes"})),
            1 => metadata.push(json!({"key": "accepts_marketing", "value": "no"})),
            _ => {}
        }
        for _ in 0..shape.tags.draw(rng) {
            metadata.push(json!({"key": "tag", "value": *pick(rng, TAGS)}));
        }
        for i in 0..shape.metadata.draw(rng) {
            let value = format!("{}-{}", pick(rng, TAGS), rng.random_range(0..10_000));
            metadata.push(json!({"key": format!("note_{i}"), "value": value}));
        }
        let external_ids =
            json!([{"key": "storefront_order_number", "value": format!("PM-{legacy_id:08}")}]);
        // Distinct sellers (1 to 3 by default), each with its lines (1 to 3 by default).
        let seller_count = shape.sellers.draw(rng);
        let mut sellers: Vec<usize> = Vec::new();
        while sellers.len() < seller_count {
            let s = rng.random_range(0..SELLERS.len());
            if !sellers.contains(&s) {
                sellers.push(s);
            }
        }
        let mut invoices = Vec::new();
        for (k, &s) in sellers.iter().enumerate() {
            let seller = SELLERS[s];
            let invoice_id = legacy_id * 10 + k as u64;
            let lines = (0..shape.lines.draw(rng))
                .map(|i| Line::build(rng, legacy_id * 100 + (k * 10 + i) as u64, i, s, shape))
                .collect();
            invoices.push(Invoice {
                legacy_id: invoice_id,
                seller,
                shipping_cents: *pick(rng, &[0, 995, 1295, 1500, 899]),
                lines,
            });
        }
        let offset = *pick(rng, OFFSETS);
        Order {
            n,
            legacy_id,
            paid: !rng.random_bool(0.04),
            created_utc: DateTime::UNIX_EPOCH,
            offset: FixedOffset::east_opt(offset).unwrap(),
            email,
            first_name,
            surname,
            phone,
            address,
            metadata: Value::Array(metadata),
            external_ids,
            invoices,
        }
    }

    fn place_at(&mut self, at: DateTime<Utc>) {
        self.created_utc = at;
    }

    /// A time as the storefront writes it: its own offset, whole seconds.
    fn local(&self, at: DateTime<Utc>) -> String {
        at.with_timezone(&self.offset)
            .to_rfc3339_opts(SecondsFormat::Secs, false)
    }

    fn total_cents(&self) -> u64 {
        self.invoices.iter().map(Invoice::total_cents).sum()
    }

    fn sums(lines: &[&Line]) -> (u64, u64, u64) {
        let subtotal = lines.iter().map(|l| l.item_cents * l.quantity).sum();
        let discount = lines.iter().map(|l| l.discount_cents).sum();
        let total = lines.iter().map(|l| l.total_cents).sum();
        (subtotal, discount, total)
    }

    /// The InvoiceWebhook node of invoice `index` (an `update` is also SENT).
    fn invoice_node(&self, index: usize, sent: bool) -> Value {
        let invoice = &self.invoices[index];
        let created = self.local(self.created_utc + Duration::seconds(1));
        let paid_at = self.local(self.created_utc + Duration::seconds(2));
        let updated = if sent {
            self.local(self.created_utc + Duration::hours(3))
        } else {
            self.local(self.created_utc + Duration::seconds(3))
        };
        let status_flags = match (self.paid, sent) {
            (false, _) => json!(["PAYMENT_UNDER_REVIEW"]),
            (true, false) => json!(["PAID"]),
            (true, true) => json!(["PAID", "SENT"]),
        };
        let own: Vec<&Line> = invoice.lines.iter().collect();
        let (subtotal, discount, lines_total) = Order::sums(&own);
        let all: Vec<&Line> = self.invoices.iter().flat_map(|i| &i.lines).collect();
        let (order_subtotal, order_discount, _) = Order::sums(&all);
        let order_shipping: u64 = self.invoices.iter().map(|i| i.shipping_cents).sum();
        let order_total = self.total_cents();
        json!({
            "__typename": "Invoice",
            "id": gid("Invoice", invoice.legacy_id),
            "legacyId": invoice.legacy_id,
            "createdAt": created,
            "updatedAt": updated,
            "paidAt": if self.paid { Value::from(paid_at) } else { Value::Null },
            "statusFlags": status_flags,
            "deliveryType": "BUY_ONLINE",
            "buyerEmailAddress": self.email,
            "buyerFirstName": self.first_name,
            "buyerSurname": self.surname,
            "buyerPhone": self.phone,
            "shippingAddress": self.address,
            "subtotalCents": subtotal,
            "discountCents": discount,
            "shippingCostCents": invoice.shipping_cents,
            "taxTotalCents": gst(lines_total + invoice.shipping_cents),
            "totalCents": invoice.total_cents(),
            "seller": {
                "id": gid("Seller", invoice.seller.0),
                "legacyId": invoice.seller.0,
                "businessName": invoice.seller.1,
            },
            "lineItems": own.iter().map(|l| l.json.clone()).collect::<Vec<_>>(),
            "order": {
                "id": gid("Order", self.legacy_id),
                "legacyId": self.legacy_id,
                "createdAt": self.local(self.created_utc),
                "updatedAt": updated,
                "status": if self.paid { "COMPLETE" } else { "PAYMENT_IN_PROGRESS" },
                "emailAddress": self.email,
                "firstName": self.first_name,
                "surname": self.surname,
                "phone": self.phone,
                "billingEmailAddress": self.email,
                "billingFirstName": self.first_name,
                "billingSurname": self.surname,
                "address": self.address,
                "subtotalCents": order_subtotal,
                "discountCents": order_discount,
                "shippingCostCents": order_shipping,
                "taxTotalCents": gst(order_total),
                "totalCents": order_total,
                "externalIds": self.external_ids,
                "metadata": self.metadata,
                "invoices": {"nodes": self.invoices.iter().map(|i| json!({
                    "id": gid("Invoice", i.legacy_id),
                    "legacyId": i.legacy_id,
                    "seller": {"legacyId": i.seller.0, "businessName": i.seller.1},
                })).collect::<Vec<_>>()},
                "lineItems": {"nodes": all.iter().map(|l| l.json.clone()).collect::<Vec<_>>()},
            }
        })
    }
}

impl Invoice {
    fn total_cents(&self) -> u64 {
        self.lines.iter().map(|l| l.total_cents).sum::<u64>() + self.shipping_cents
    }
}

impl Line {
    fn build(
        rng: &mut Xoshiro256PlusPlus,
        legacy_id: u64,
        index: usize,
        seller: usize,
        shape: Shape,
    ) -> Line {
        let (noun, tree, sku_stem) = *pick(rng, PRODUCTS);
        let adjective = *pick(rng, ADJECTIVES);
        let mut title = format!("{adjective} {noun}");
        if rng.random_bool(0.25) {
            title.push(' ');
            title.push_str(pick::<&str>(rng, EMOJI));
        }
        for _ in 0..shape.title_words.draw(rng) {
            title.push(' ');
            title.push_str(pick::<&str>(rng, TITLE_WORDS));
        }
        // Brands belong to sellers; a few adverts name none.
        let brand = (!rng.random_bool(0.08))
            .then(|| BRANDS[(seller * 2 + rng.random_range(0..2)) % BRANDS.len()]);
        let variant_name = (!rng.random_bool(0.1)).then(|| *pick(rng, VARIANTS));
        let sku = format!("{sku_stem}-{:05}", legacy_id % 100_000);
        let quantity = *pick(rng, &[1, 1, 1, 1, 2, 2, 3, 4]);
        let item_cents = rng.random_range(3..400) * 100 + *pick(rng, &[95, 99, 50, 0, 45]);
        let subtotal = item_cents * quantity;
        let discount_cents = if rng.random_bool(0.2) {
            subtotal / 10
        } else {
            0
        };
        let total_cents = subtotal - discount_cents;
        let advert_id = 200_000 + rng.random_range(0..50_000u64);
        let taxon = tree.filter(|_| !rng.random_bool(0.05)).map(|tree| {
            json!({
                "id": gid("Taxon", 400 + tree.len() as u64),
                "displayName": tree.rsplit(" > ").next().unwrap_or(tree),
                "treeName": tree,
            })
        });
        let slug: String = sku.to_ascii_lowercase();
        let image = |i: usize| {
            format!(
                "https://marketplacer.imgix.net/petmarket/{slug}-{i}.jpg?auto=format&fm=pjpg&fit=max&w=1200&h=1200&s={:032x}",
                (legacy_id as u128)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
                    .wrapping_add(i as u128)
            )
        };
        // Only what the modelled query selects of the advert (`LineItemFields`).
        let advert = json!({ "taxon": taxon });
        let mut json = json!({
            "id": gid("LineItem", legacy_id),
            "legacyId": legacy_id,
            "quantity": quantity,
            "statusFull": "ALLOCATED",
            "advertId": gid("Advert", advert_id),
            "advertLegacyId": advert_id,
            "advertTitle": title,
            "brandName": brand,
            "variantId": gid("Variant", advert_id * 10 + 1),
            "variantLegacyId": advert_id * 10 + 1,
            "variantName": variant_name,
            "variantSku": sku,
            "variantBarcode": format!("93{:011}", rng.random_range(0..10u64.pow(11))),
            "itemAmountCents": item_cents,
            "subtotalCents": subtotal,
            "discountCents": discount_cents,
            "taxTotalCents": gst(total_cents),
            "totalCents": total_cents,
            "image": {"url": image(0)},
            "variant": {"advert": Value::Null},
        });
        json["variant"]["advert"] = advert;
        Line {
            index,
            legacy_id,
            quantity,
            item_cents,
            discount_cents,
            total_cents,
            title,
            brand,
            variant_name,
            sku,
            json,
        }
    }
}

/// GST inside a tax-inclusive price: total / 11, rounded half up.
fn gst(total: u64) -> u64 {
    (total * 10 / 11 + 5) / 10
}

fn pick<'a, T>(rng: &mut Xoshiro256PlusPlus, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// An ASCII address as checkout forms send it: sometimes capitalised, sometimes padded.
fn noisy_email(rng: &mut Xoshiro256PlusPlus, local: &str, n: u64) -> String {
    let domain = *pick(rng, DOMAINS);
    let mut email = format!("{local}{}@{domain}", n % 1000);
    if rng.random_bool(0.3) {
        email = email
            .split('.')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or(String::new(), |c| {
                    c.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect::<Vec<_>>()
            .join(".");
    }
    if rng.random_bool(0.15) {
        email = format!("  {email} ");
    }
    email
}

/// Marketplacer's global ids: base64 of `Type-legacyId`.
fn gid(typename: &str, legacy_id: u64) -> String {
    base64(format!("{typename}-{legacy_id}").as_bytes())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn uuid(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// (first name, surname, ASCII email stem).
const PEOPLE: &[(&str, &str, &str)] = &[
    ("Zoë", "Ångström", "zoe.angstrom"),
    ("Łukasz", "Wiśniewski", "lukasz.wisniewski"),
    ("芳", "王", "wang.fang"),
    ("José", "Núñez", "jose.nunez"),
    ("Siobhán", "O'Reilly", "siobhan.oreilly"),
    ("Øyvind", "Håland", "oyvind.haland"),
    ("Chloé", "Dubois", "chloe.dubois"),
    ("Mai", "Nguyễn", "mai.nguyen"),
    ("Aroha", "Ngata", "aroha.ngata"),
    ("Jürgen", "Müller", "juergen.mueller"),
    ("Ana", "Lučić", "ana.lucic"),
    ("Hiroshi", "田中", "hiroshi.tanaka"),
    ("Priya", "Rāmaswāmy", "priya.ramaswamy"),
    ("Olivia", "Smith", "olivia.smith"),
    ("Jack", "Williams", "jack.williams"),
    ("Charlotte", "Brown", "charlotte.brown"),
    ("Noah", "Taylor", "noah.taylor"),
    ("Amelia", "Jones", "amelia.jones"),
    ("Liam", "Wilson", "liam.wilson"),
    ("Isla", "Thompson", "isla.thompson"),
    ("Søren", "Kierkegård", "soren.k"),
    ("Małgorzata", "Kowalczyk", "malgorzata.k"),
    ("Ίρις", "Παπαδοπούλου", "iris.papadopoulou"),
    ("Дарья", "Иванова", "darya.ivanova"),
];

const DOMAINS: &[&str] = &[
    "example.com",
    "example.com.au",
    "mail.example.net",
    "example.co.nz",
    "inbox.example.org",
];

/// (street, city, postcode, state, short, country code, country name).
type Place = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);
const PLACES: &[Place] = &[
    (
        "Wattle Street",
        "Newtown",
        "2042",
        "New South Wales",
        "NSW",
        "AU",
        "Australia",
    ),
    (
        "Hay Street",
        "Perth",
        "6000",
        "Western Australia",
        "WA",
        "AU",
        "Australia",
    ),
    (
        "Brunswick Street",
        "Fitzroy",
        "3065",
        "Victoria",
        "VIC",
        "AU",
        "Australia",
    ),
    (
        "Rundle Mall",
        "Adelaide",
        "5000",
        "South Australia",
        "SA",
        "AU",
        "Australia",
    ),
    (
        "Queen Street",
        "Brisbane City",
        "4000",
        "Queensland",
        "QLD",
        "AU",
        "Australia",
    ),
    (
        "Cuba Street",
        "Te Aro",
        "6011",
        "Wellington",
        "WGN",
        "NZ",
        "New Zealand",
    ),
    (
        "Ponsonby Road",
        "Auckland",
        "1011",
        "Auckland",
        "AUK",
        "NZ",
        "New Zealand",
    ),
];

/// Offsets (seconds east) the storefronts write times in: AEDT, AEST, ACDT, AWST, NZDT.
const OFFSETS: &[i32] = &[39_600, 39_600, 39_600, 36_000, 37_800, 28_800, 46_800];

/// (legacyId, businessName): no two differ only by case.
const SELLERS: &[(u64, &str)] = &[
    (11, "Paws & Claws Co."),
    (12, "Fetch! Supplies"),
    (13, "Café Canin — Sydney"),
    (14, "Żabka Pet Supplies"),
    (15, "北京宠物用品店"),
    (16, "Kiwi Kritters Ltd"),
    (17, "Øresund Outdoor ApS"),
    (18, "Über Pets GmbH"),
    (19, "Møller & Søn Aquatics"),
    (20, "Tūī Garden Co."),
    (21, "The Bird Nest 🐦"),
    (22, "Sakura Pets 桜"),
];

const BRANDS: &[&str] = &[
    "Paws & Claws",
    "Paws & Claws Naturals",
    "Fetch!",
    "Fetch! Pro",
    "Café Canin",
    "Canin Élite",
    "Żabka",
    "Żabka Aqua",
    "长城宠物",
    "Kiwi Kritters",
    "Kritter Kare",
    "Øresund",
    "Über Pets",
    "Übergut",
    "Møller",
    "Søn Reef",
    "Tūī",
    "Tūī Home",
    "Nest & Perch",
    "Birdsong",
    "Sakura",
    "Sakura Kōji",
    "Hachikō",
    "Northwind",
];

/// (noun, taxon tree name or none, SKU stem).
const PRODUCTS: &[(&str, Option<&str>, &str)] = &[
    (
        "Rope Tug Toy — 3 Knot",
        Some("Pets > Dog > Toys"),
        "PC-ROPE",
    ),
    (
        "Grain-Free Kangaroo & Pumpkin Kibble 7kg",
        Some("Pets > Dog > Food > Dry Food"),
        "PC-KIBBLE",
    ),
    (
        "Reflective Dog Lead 1.8m",
        Some("Pets > Dog > Collars & Leads"),
        "FS-LEAD",
    ),
    (
        "Chew Toy <XL> \"Tough\" & Durable",
        Some("Pets > Dog > Toys"),
        "CC-CHEW",
    ),
    (
        "Clumping Litter 15L",
        Some("Pets > Cat > Litter & Accessories"),
        "ZB-LITTER",
    ),
    (
        "Scratching Post Tower",
        Some("Pets > Cat > Furniture"),
        "KK-SCRATCH",
    ),
    ("Feather Wand", Some("Pets > Cat > Toys"), "KK-WAND"),
    (
        "Aquarium Filter 400L/h",
        Some("Pets > Fish > Aquarium Equipment"),
        "MS-FILTER",
    ),
    (
        "Tropical Flakes 200g",
        Some("Pets > Fish > Food"),
        "MS-FLAKES",
    ),
    (
        "Budgie Cage with Stand",
        Some("Pets > Bird > Cages"),
        "BN-CAGE",
    ),
    (
        "Seed Mix — Parrot Blend",
        Some("Pets > Bird > Food"),
        "BN-SEED",
    ),
    (
        "Hay Bale Timothy 1kg",
        Some("Pets > Small Animals > Food"),
        "TG-HAY",
    ),
    (
        "Orthopaedic Dog Bed",
        Some("Pets > Dog > Beds & Bedding"),
        "UP-BED",
    ),
    (
        "Ceramic Bowl Set",
        Some("Pets > Dog > Bowls & Feeders"),
        "SK-BOWL",
    ),
    ("Gift Card", None, "GIFT"),
];

const ADJECTIVES: &[&str] = &[
    "Deluxe",
    "Eco",
    "Classic",
    "Premium",
    "Mini",
    "Jumbo",
    "Organic",
    "Everyday",
    "Naïve Art",
    "Édition Limitée",
    "Smart",
    "Heavy-Duty",
];

const EMOJI: &[&str] = &["🐶", "🐱", "🐟", "🐦", "✨", "🎁", "🌿", "❤️"];

/// Words that lengthen titles (`--title-words`), as sellers pad them for search.
const TITLE_WORDS: &[&str] = &[
    "für",
    "Hunde",
    "großer",
    "résistant",
    "à l'eau",
    "\"waterproof\"",
    "eco-friendly",
    "大型犬",
    "ペット用",
    "Größe XL",
    "set of 2",
    "with free gift 🎁",
    "vet approved",
    "100% natural",
    "hand-made in Tāmaki Makaurau",
    "Ålesund edition",
];

/// Order tags (`--tags`), as storefronts keep them in metadata.
const TAGS: &[&str] = &[
    "vip",
    "first-order",
    "gift",
    "wholesale",
    "subscription",
    "click & collect",
    "rückgabe",
    "café-partner",
    "élevage",
    "新客户",
    "お得意様",
    "🐾 club",
];

const VARIANTS: &[&str] = &[
    "Large / Blue",
    "Small / Red",
    "Medium / Grün",
    "7kg",
    "15L",
    "One Size",
    "XL / Noir",
    "2 Pack",
];
