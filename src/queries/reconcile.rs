//! The reconciliation queries, built from the webhook queries' selection sets.
//!
//! `marketsync reconcile` re-reads what changed in Marketplacer over a window and maps each
//! object exactly as its webhook would have been mapped. That only holds if each object read
//! carries every field its webhook carries, the client's additions included; so, like the
//! backfill query, these are derived, never written by hand:
//!
//! - invoices updated in the window, and invoices paid in it (`invoices(filters:)`, oldest
//!   change first): each node selects what the Invoice webhook selects, plus its `shipments`
//!   and `refundRequests` selected as the Shipment and RefundRequest webhooks select them, plus
//!   what those two select of their invoice and its order (they carry both);
//! - refund requests refunded in the window (`refundRequests(filters: {refundedSince,
//!   refundedUntil, statuses: [REFUNDED]})`), selected as the RefundRequest webhook selects
//!   them: a refund whose invoice was not otherwise changed in the window;
//! - invoice amendments created in the window, which no mapping reads: counted, and those on an
//!   invoice without a refunded refund request reported as refunds outside refund requests;
//! - the operator's webhooks (a disabled one is the first finding), `siteConfig {
//!   verticalCode }`, the marketplace as the `Marketplacer-Vertical` header names it, and
//!   `klaviyoSettings { ecommerceTrackingEnabled }`: Marketplacer's own Klaviyo integration,
//!   which on sends its own Placed Order (a second sender of our metrics).
//!
//! Shipments have no root field: they are read through their invoice, which an Invoice update
//! accompanies (marketplacer.md §2.2). Pages are the largest Marketplacer serves (500).
//! [`crate::source::reconcile`] turns each node back into the webhook's record.

use super::backfill::{SYNTHETIC, field, field_set, sets, split};
use super::{Field, Query, QueryProblem, QuerySet, SelectionSet};

/// One query of a reconciliation, in the order a run makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Webhooks,
    UpdatedInvoices,
    PaidInvoices,
    RefundedRequests,
    Amendments,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Webhooks,
        Step::UpdatedInvoices,
        Step::PaidInvoices,
        Step::RefundedRequests,
        Step::Amendments,
    ];

    /// The name kept in the checkpoint and shown in progress.
    pub fn name(self) -> &'static str {
        match self {
            Step::Webhooks => "webhooks",
            Step::UpdatedInvoices => "invoices-updated",
            Step::PaidInvoices => "invoices-paid",
            Step::RefundedRequests => "refund-requests-refunded",
            Step::Amendments => "invoice-amendments",
        }
    }

    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The GraphQL operation name, which Marketplacer's logs and our errors show.
    pub fn operation(self) -> &'static str {
        match self {
            Step::Webhooks => "ReconcileWebhooks",
            Step::UpdatedInvoices => "ReconcileUpdatedInvoices",
            Step::PaidInvoices => "ReconcilePaidInvoices",
            Step::RefundedRequests => "ReconcileRefundedRequests",
            Step::Amendments => "ReconcileAmendments",
        }
    }

    /// The root field whose connection is paged.
    pub fn root(self) -> &'static str {
        match self {
            Step::Webhooks => "webhooks",
            Step::UpdatedInvoices | Step::PaidInvoices => "invoices",
            Step::RefundedRequests => "refundRequests",
            Step::Amendments => "invoiceAmendments",
        }
    }

    /// Whether its variables include the window (`$since`, `$until`).
    pub fn windowed(self) -> bool {
        self != Step::Webhooks
    }
}

const WINDOW_VARIABLES: &str = "$since: ISO8601DateTime!, $until: ISO8601DateTime!, $after: String";

/// Every query of a reconciliation with pages of `page_size`, in [`Step::ALL`] order; and
/// where two webhook queries select one key as different fields (aliases), which cannot be put
/// in one query.
pub fn reconcile_queries(
    set: &QuerySet,
    page_size: u32,
) -> (Vec<(Step, Query)>, Vec<QueryProblem>) {
    let page_size = page_size.to_string();
    let record = |type_name: &str| set.query(type_name).map(Query::record).unwrap_or_default();
    let mut problems = Vec::new();

    // An invoice as its webhook carries it, with what the Shipment and RefundRequest webhooks
    // carry of it (their `invoice`, and its `order`), and those two underneath.
    let mut invoice = record("Invoice");
    for (type_name, list) in [
        ("Shipment", "shipments"),
        ("RefundRequest", "refundRequests"),
    ] {
        let (mut own, their_invoice) = split(record(type_name), "invoice");
        problems.extend(invoice.merge(their_invoice.unwrap_or_default()));
        // What the sweep itself reads of each: its id (each fact is counted once) and when it
        // changed (only changes inside the window are facts of the window).
        problems.extend(own.merge(scalars(&["__typename", "id", "createdAt", "updatedAt"])));
        problems.extend(invoice.merge(field_set(field(list, &[], own))));
    }
    problems.extend(invoice.merge(scalars(&["__typename", "id", "updatedAt", "paidAt"])));

    let mut refund = record("RefundRequest");
    problems.extend(refund.merge(scalars(&["__typename", "id", "updatedAt", "refundedAt"])));

    let amendment = sets([
        leaf("id"),
        leaf("legacyId"),
        leaf("createdAt"),
        leaf("totalCents"),
        field(
            "invoice",
            &[],
            sets([
                leaf("id"),
                leaf("legacyId"),
                field("refundRequests", &[], sets([leaf("id"), leaf("status")])),
            ]),
        ),
    ]);
    let webhook = sets([leaf("id"), leaf("type"), leaf("enabled"), leaf("eventName")]);

    let paged = |root: &str, arguments: &[(&str, &str)], nodes: SelectionSet| {
        let mut all = vec![("first", page_size.as_str()), ("after", "$after")];
        all.extend_from_slice(arguments);
        let page_info = sets([leaf("hasNextPage"), leaf("endCursor")]);
        field(
            root,
            &all,
            sets([
                field("pageInfo", &[], page_info),
                field("nodes", &[], nodes),
            ]),
        )
    };
    let query = |step: Step, type_name: &str, variables: &str, selection: SelectionSet| Query {
        type_name: type_name.into(),
        header: format!("query {}({variables})", step.operation()),
        selection,
        file: 0,
        at: SYNTHETIC,
    };
    let by_update = "{fields: [UPDATED_AT], ordering: ASCENDING}";
    let queries = vec![
        (
            Step::Webhooks,
            query(
                Step::Webhooks,
                "Webhook",
                "$after: String",
                sets([
                    field("siteConfig", &[], field_set(leaf("verticalCode"))),
                    field(
                        "klaviyoSettings",
                        &[],
                        field_set(leaf("ecommerceTrackingEnabled")),
                    ),
                    paged("webhooks", &[], webhook),
                ]),
            ),
        ),
        (
            Step::UpdatedInvoices,
            query(
                Step::UpdatedInvoices,
                "Invoice",
                WINDOW_VARIABLES,
                field_set(paged(
                    "invoices",
                    &[
                        ("filters", "{updatedSince: $since, updatedUntil: $until}"),
                        ("sort", by_update),
                    ],
                    invoice.clone(),
                )),
            ),
        ),
        (
            Step::PaidInvoices,
            query(
                Step::PaidInvoices,
                "Invoice",
                WINDOW_VARIABLES,
                field_set(paged(
                    "invoices",
                    &[
                        ("filters", "{paidSince: $since, paidUntil: $until}"),
                        ("sort", "{fields: [PAID_AT], ordering: ASCENDING}"),
                    ],
                    invoice,
                )),
            ),
        ),
        (
            Step::RefundedRequests,
            query(
                Step::RefundedRequests,
                "RefundRequest",
                WINDOW_VARIABLES,
                field_set(paged(
                    "refundRequests",
                    &[(
                        "filters",
                        "{refundedSince: $since, refundedUntil: $until, statuses: [REFUNDED]}",
                    )],
                    refund,
                )),
            ),
        ),
        (
            Step::Amendments,
            query(
                Step::Amendments,
                "InvoiceAmendment",
                WINDOW_VARIABLES,
                field_set(paged(
                    "invoiceAmendments",
                    &[
                        ("filters", "{createdSince: $since, createdUntil: $until}"),
                        ("sort", "{fields: [CREATED_AT], ordering: ASCENDING}"),
                    ],
                    amendment,
                )),
            ),
        ),
    ];
    (queries, problems)
}

fn leaf(name: &str) -> Field {
    field(name, &[], SelectionSet::default())
}

fn scalars(names: &[&str]) -> SelectionSet {
    sets(names.iter().map(|name| leaf(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::{ProblemKind, check};
    use crate::source::schema::MarketplacerSchema;

    fn builtin() -> QuerySet {
        let (mut set, problems) = QuerySet::builtin();
        assert!(problems.is_empty(), "{problems:?}");
        set.simplify(MarketplacerSchema::builtin());
        set
    }

    #[test]
    fn every_query_is_one_the_schema_accepts() {
        let (queries, problems) = reconcile_queries(&builtin(), 500);
        assert!(problems.is_empty(), "{problems:?}");
        let steps: Vec<Step> = queries.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, Step::ALL);
        for (step, query) in &queries {
            let problems = check::check(query, MarketplacerSchema::builtin());
            assert!(
                problems
                    .iter()
                    .all(|p| matches!(p.kind, ProblemKind::Deprecated { .. })),
                "{}: {problems:?}",
                step.name()
            );
            let text = query.render();
            assert!(
                text.starts_with(&format!("query {}(", step.operation())),
                "{text}"
            );
            assert!(text.contains("first: 500, after: $after"), "{text}");
        }
    }

    #[test]
    fn the_webhooks_query_reads_whether_marketplacers_own_klaviyo_tracking_is_on() {
        let (queries, _) = reconcile_queries(&builtin(), 500);
        let (step, webhooks) = &queries[0];
        assert_eq!(*step, Step::Webhooks);
        let settings = &webhooks.selection.fields["klaviyoSettings"].selection;
        assert!(
            settings.fields.contains_key("ecommerceTrackingEnabled"),
            "{}",
            webhooks.render()
        );
        // The API keys are Marketplacer's secrets: never asked for.
        assert!(
            !webhooks.render().contains("ApiKey"),
            "{}",
            webhooks.render()
        );
    }

    #[test]
    fn a_field_a_client_adds_to_a_webhook_query_is_read_by_reconcile_too() {
        let mut set = builtin();
        let client = tempfile::tempdir().unwrap();
        std::fs::write(
            client.path().join("shipment.graphql"),
            "query { node(id: $id) { ... on Shipment { note invoice { order { companyName } } } } }",
        )
        .unwrap();
        let problems = set.add_client(client.path()).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let (queries, problems) = reconcile_queries(&set, 500);
        assert!(problems.is_empty(), "{problems:?}");
        let (_, updated) = &queries[1];
        let nodes = &updated.selection.fields["invoices"].selection.fields["nodes"].selection;
        let shipments = &nodes.fields["shipments"].selection;
        assert!(shipments.fields.contains_key("note"));
        assert!(shipments.fields.contains_key("trackingNumber"));
        assert!(
            nodes.fields["order"]
                .selection
                .fields
                .contains_key("companyName"),
            "the shipment's order is the invoice's order"
        );
    }
}
