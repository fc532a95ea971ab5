//! A client's changes to the base mappings: `client.yaml` and overlay files.
//!
//! Consultants keep one base set and adjust it per client. Copying a whole mapping to change one
//! property means the copy silently stops receiving fixes to the base, so a client states only
//! its differences:
//! - `client.yaml` overrides settings (marketplaces, metric names, consent path, key variable,
//!   rate limits) and adds profile attributes;
//! - an overlay file names a base mapping (`overlay: placed-order`) and changes it: keys it sets
//!   replace the base's, `null` removes, `select`/`compute` change entry by entry, and
//!   `emit.body` is merged as a JSON merge patch (RFC 7396: maps merge key by key, `null`
//!   deletes, anything else replaces).
//!
//! Every value keeps the position of the file it was written in, so a mistake in an overlay is
//! reported in the overlay, not in the base file it was merged into.

use super::rules::{did_you_mean, key_position};
use super::settings::{ConsentSettings, MarketplaceSettings, RateLimitSettings, Settings};
use super::{
    BodyNode, CoalesceSpec, Lane, MappingSpec, MatchSpec, OneOrMany, SelectSpec, Spanned, TestSpec,
    WaitsForSpec,
};
use crate::diagnostic::{Diagnostic, Files, Position};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};

/// A change to one optional key: left alone, removed (`null`, written at the position), or
/// replaced.
#[derive(Debug, Default)]
pub enum Patch<T> {
    #[default]
    Keep,
    Remove(Position),
    Set(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Option<T>>::deserialize(deserializer)?;
        Ok(match spanned.value {
            None => Patch::Remove(spanned.at),
            Some(value) => Patch::Set(value),
        })
    }
}

/// Something an overlay removed from a base mapping, and where the `null` was written: a
/// base part that still needs it is the overlay's mistake, reported at that line.
#[derive(Debug, Clone)]
pub struct Removed {
    pub kind: RemovedKind,
    /// The entry's name, the key (`when`), or the body field's dotted path.
    pub name: String,
    /// The key of the `null` in the overlay.
    pub at: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedKind {
    Selection,
    Computed,
    Key,
    BodyField,
}

/// An overlay file: which base mapping it changes, and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySpec {
    /// The name of the base mapping this file changes.
    pub overlay: Spanned<String>,
    /// Drop the base mapping for this client (`Some` with where `disable: true` is).
    #[serde(default, deserialize_with = "disable")]
    pub disable: Option<Position>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub lane: Option<Spanned<Lane>>,
    /// Replaces the base's `match` as a whole (conditions do not merge well).
    #[serde(default, rename = "match")]
    pub matcher: Option<MatchSpec>,
    /// Selections added or replaced by name; `name: null` removes one.
    #[serde(default)]
    pub select: IndexMap<String, Spanned<Option<Spanned<SelectSpec>>>>,
    /// Computed values added or replaced by name; `name: null` removes one.
    #[serde(default)]
    pub compute: IndexMap<String, Spanned<Option<Spanned<String>>>>,
    #[serde(default)]
    pub when: Patch<Spanned<String>>,
    #[serde(default)]
    pub require: Patch<Spanned<OneOrMany<String>>>,
    #[serde(default, rename = "for")]
    pub for_each: Patch<Spanned<String>>,
    #[serde(default)]
    pub once_per: Patch<Spanned<String>>,
    #[serde(default)]
    pub waits_for: Patch<WaitsForSpec>,
    #[serde(default)]
    pub coalesce: Patch<CoalesceSpec>,
    #[serde(default)]
    pub emit: Option<EmitOverlay>,
    /// More sample deliveries, relative to the overlay file.
    #[serde(default)]
    pub examples: Vec<Spanned<String>>,
    /// More tests, their files relative to the overlay file.
    #[serde(default)]
    pub tests: Vec<TestSpec>,
    /// `false` leaves out the base mapping's own tests, for an overlay that deliberately
    /// changes what they check.
    #[serde(default = "yes")]
    pub base_tests: bool,
    /// `false` leaves out the base mapping's own examples, for a client whose settings (such
    /// as `consent.path`) make them produce nothing; the overlay's `examples` still apply.
    #[serde(default = "yes")]
    pub base_examples: bool,
}

fn yes() -> bool {
    true
}

/// `disable: true` as where it was written; `false` as `None`.
fn disable<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Position>, D::Error> {
    let on = Spanned::<bool>::deserialize(deserializer)?;
    Ok(on.value.then_some(on.at))
}

/// Changes to `emit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitOverlay {
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// A merge patch over the base body.
    #[serde(default)]
    pub body: Option<Spanned<BodyNode>>,
}

impl OverlaySpec {
    /// Applies this overlay's changes to `base` (its `disable` is the caller's business), and
    /// returns what it could not do: a `null` that removes nothing is a misspelt name, and the
    /// key it meant would otherwise still be sent.
    pub fn apply_to(
        self,
        base: &mut MappingSpec,
        files: &Files,
    ) -> (Vec<Diagnostic>, Vec<Removed>) {
        let mut problems = Removals {
            mapping: base.name.value.clone(),
            files,
            found: Vec::new(),
            removed: Vec::new(),
        };
        if let Some(description) = self.description {
            base.description = Some(description);
        }
        if let Some(lane) = self.lane {
            base.lane = lane;
        }
        if let Some(matcher) = self.matcher {
            base.matcher = matcher;
        }
        problems.entries(&mut base.select, self.select, RemovedKind::Selection);
        problems.entries(&mut base.compute, self.compute, RemovedKind::Computed);
        problems.patch("when", self.when, &mut base.when);
        problems.patch("require", self.require, &mut base.require);
        problems.patch("for", self.for_each, &mut base.for_each);
        problems.patch("once_per", self.once_per, &mut base.once_per);
        problems.patch("waits_for", self.waits_for, &mut base.waits_for);
        problems.patch("coalesce", self.coalesce, &mut base.coalesce);
        if let Some(emit) = self.emit {
            if let Some(endpoint) = emit.endpoint {
                base.emit.endpoint = endpoint;
            }
            if let Some(body) = emit.body {
                problems.merge_patch(&mut base.emit.body, body, "");
            }
        }
        if !self.base_examples {
            base.examples.clear();
        }
        base.examples.extend(self.examples);
        if !self.base_tests {
            base.tests.clear();
        }
        base.tests.extend(self.tests);
        (problems.found, problems.removed)
    }
}

/// Applies entry changes and body patches to one base mapping, collecting every `null` that
/// removes nothing.
struct Removals<'a> {
    mapping: String,
    files: &'a Files,
    found: Vec<Diagnostic>,
    removed: Vec<Removed>,
}

impl Removals<'_> {
    fn record(&mut self, kind: RemovedKind, name: &str, null_at: Position) {
        let text = &self.files.get(null_at.file).text;
        let key = name.rsplit('.').next().unwrap_or(name);
        self.removed.push(Removed {
            kind,
            name: name.to_owned(),
            at: key_position(text, key, null_at),
        });
    }

    fn patch<T>(&mut self, key: &str, patch: Patch<T>, target: &mut Option<T>) {
        match patch {
            Patch::Keep => {}
            Patch::Remove(at) => {
                if target.take().is_some() {
                    self.record(RemovedKind::Key, key, at);
                } else {
                    self.nothing(key, at, format!("`{key}`"), std::iter::empty());
                }
            }
            Patch::Set(value) => *target = Some(value),
        }
    }

    /// `key: null` at `at` (the `null`) found nothing to remove among `known`.
    fn nothing<'k>(
        &mut self,
        key: &str,
        at: Position,
        what: String,
        known: impl Iterator<Item = &'k str>,
    ) {
        let text = &self.files.get(at.file).text;
        let at = key_position(text, key, at);
        self.found.push(self.files.error(
            at,
            format!(
                "`{key}: null` removes nothing: the base mapping `{}` has no {what}{}",
                self.mapping,
                did_you_mean(key, known)
            ),
        ));
    }

    /// Replaces entries in place (keeping their order, which compute depends on), appends new
    /// ones, and removes those set to `null`.
    fn entries<T>(
        &mut self,
        base: &mut IndexMap<String, Spanned<T>>,
        changes: IndexMap<String, Spanned<Option<Spanned<T>>>>,
        kind: RemovedKind,
    ) {
        let what = match kind {
            RemovedKind::Selection => "selection",
            _ => "computed value",
        };
        for (name, change) in changes {
            match change.value {
                Some(value) => {
                    base.insert(name, value);
                }
                None => {
                    if base.shift_remove(&name).is_some() {
                        self.record(kind, &name, change.at);
                    } else {
                        let known: Vec<String> = base.keys().cloned().collect();
                        self.nothing(
                            &name,
                            change.at,
                            format!("{what} `{name}`"),
                            known.iter().map(String::as_str),
                        );
                    }
                }
            }
        }
    }

    /// RFC 7396 over spanned body trees: a map merges into a map key by key (`null` deletes
    /// the key); anything else replaces what was there, position included. `pointer` is the
    /// dotted path of `base` in the body.
    fn merge_patch(
        &mut self,
        base: &mut Spanned<BodyNode>,
        patch: Spanned<BodyNode>,
        pointer: &str,
    ) {
        match (&mut base.value, patch.value) {
            (BodyNode::Map(entries), BodyNode::Map(changes)) => {
                for (key, change) in changes {
                    let path = join(pointer, &key);
                    if matches!(change.value, BodyNode::Null) {
                        if entries.shift_remove(&key).is_some() {
                            self.record(RemovedKind::BodyField, &path, change.at);
                        } else {
                            let known: Vec<String> = entries.keys().cloned().collect();
                            self.nothing(
                                &key,
                                change.at,
                                format!("`{path}` in its body"),
                                known.iter().map(String::as_str),
                            );
                        }
                    } else if let Some(existing) = entries.get_mut(&key) {
                        self.merge_patch(existing, change, &path);
                    } else {
                        let added = self.without_nulls(change, &path);
                        entries.insert(key, added);
                    }
                }
            }
            (_, value) => *base = self.without_nulls(Spanned::new(value, patch.at), pointer),
        }
    }

    /// A new subtree added by a merge patch keeps no `null` members (RFC 7396); each is a
    /// removal of something the base does not have.
    fn without_nulls(&mut self, mut node: Spanned<BodyNode>, pointer: &str) -> Spanned<BodyNode> {
        if let BodyNode::Map(entries) = &mut node.value {
            for (key, value) in entries.iter() {
                if matches!(value.value, BodyNode::Null) {
                    let path = join(pointer, key);
                    self.nothing(
                        key,
                        value.at,
                        format!("`{path}` in its body"),
                        std::iter::empty(),
                    );
                }
            }
            entries.retain(|_, v| !matches!(v.value, BodyNode::Null));
            for (key, value) in entries.iter_mut() {
                let path = join(pointer, key);
                *value = self.without_nulls(
                    std::mem::replace(value, Spanned::new(BodyNode::Null, Position::default())),
                    &path,
                );
            }
        }
        node
    }
}

fn join(pointer: &str, key: &str) -> String {
    if pointer.is_empty() {
        key.to_owned()
    } else {
        format!("{pointer}.{key}")
    }
}

/// `clients/<name>/client.yaml`: what sets one client apart from the base settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default)]
    pub description: Option<String>,
    /// The Marketplacer verticals of this client, with their currencies.
    #[serde(default)]
    pub marketplaces: IndexMap<String, MarketplaceSettings>,
    /// The marketplace of deliveries that name none; the first of `marketplaces` when left out.
    #[serde(default)]
    pub default_marketplace: Option<String>,
    /// The environment variable holding this client's Klaviyo private key.
    #[serde(default)]
    pub klaviyo_api_key_env: Option<String>,
    /// Whether Marketplacer's own Klaviyo integration is on for this client.
    #[serde(default)]
    pub marketplacer_klaviyo_integration: Option<Spanned<bool>>,
    /// Metric names by role, replacing the base's one by one.
    #[serde(default)]
    pub metrics: IndexMap<String, String>,
    #[serde(default)]
    pub consent: Option<ConsentSettings>,
    #[serde(default)]
    pub phone_region: Option<String>,
    /// Extra profile properties: property name → JSONPath into the record (optional values;
    /// an empty one is left out). Added to the mapping named by `profile_mapping`.
    #[serde(default)]
    pub profile_attributes: IndexMap<String, Spanned<String>>,
    /// The mapping `profile_attributes` are added to.
    #[serde(default = "default_profile_mapping")]
    pub profile_mapping: Spanned<String>,
    /// Per-endpoint rate limits, replacing the base's one by one.
    #[serde(default)]
    pub rate_limits: IndexMap<String, RateLimitSettings>,
    /// Built-in alerts `serve` sends, for teams without Prometheus.
    #[serde(default)]
    pub alerts: Option<crate::alerts::AlertSettings>,
    /// The Marketplacer instance `reconcile` reads (its GraphQL Operator API).
    #[serde(default)]
    pub marketplacer: Option<crate::marketplacer::MarketplacerSettings>,
    /// When `serve` reconciles, and over which window.
    #[serde(default)]
    pub reconcile: Option<crate::reconcile::ReconcileSettings>,
}

fn default_profile_mapping() -> Spanned<String> {
    Spanned::new("profile".to_owned(), Position::default())
}

impl ClientConfig {
    /// The base settings with this client's values in place.
    pub fn apply_to(&self, settings: &mut Settings) {
        if !self.marketplaces.is_empty() {
            settings.marketplaces = self.marketplaces.clone();
        }
        let default_marketplace = self
            .default_marketplace
            .as_ref()
            .or(self.marketplaces.keys().next());
        if let Some(marketplace) = default_marketplace {
            settings.marketplace = marketplace.clone();
            if let Some(m) = self.marketplaces.get(marketplace) {
                settings.currency = m.currency.clone();
            }
        }
        if let Some(env) = &self.klaviyo_api_key_env {
            settings.klaviyo_api_key_env = Some(env.clone());
        }
        if let Some(on) = &self.marketplacer_klaviyo_integration {
            settings.marketplacer_klaviyo_integration = Some(on.clone());
        }
        for (role, name) in &self.metrics {
            settings.metrics.insert(role.clone(), name.clone());
        }
        if let Some(consent) = &self.consent {
            settings.consent = consent.clone();
        }
        if let Some(region) = &self.phone_region {
            settings.phone_region = region.clone();
        }
        for (path, limit) in &self.rate_limits {
            settings.rate_limits.insert(path.clone(), *limit);
        }
        if let Some(alerts) = &self.alerts {
            settings.alerts = Some(alerts.clone());
        }
        if let Some(marketplacer) = &self.marketplacer {
            settings.marketplacer = Some(marketplacer.clone());
        }
        if let Some(reconcile) = &self.reconcile {
            settings.reconcile = Some(reconcile.clone());
        }
    }

    /// `profile_attributes` as an overlay of the profile mapping: each attribute becomes an
    /// optional selection and a property, both pointing at the attribute's line.
    pub fn profile_overlay(&self) -> Option<OverlaySpec> {
        if self.profile_attributes.is_empty() {
            return None;
        }
        let mut select = IndexMap::new();
        let mut properties = IndexMap::new();
        for (index, (property, path)) in self.profile_attributes.iter().enumerate() {
            let name = format!("client_attribute_{}", index + 1);
            let selection = SelectSpec {
                path: path.value.clone(),
                many: false,
                optional: true,
                default: None,
                from: None,
                label: Some(format!("profile_attributes.{property}")),
            };
            select.insert(
                name.clone(),
                Spanned::new(Some(Spanned::new(selection, path.at)), path.at),
            );
            properties.insert(
                property.clone(),
                Spanned::new(BodyNode::String(format!("{{{{ {name} }}}}")), path.at),
            );
        }
        let at = self.profile_mapping.at;
        let nest = |key: &str, inner: BodyNode| {
            BodyNode::Map(IndexMap::from([(key.to_owned(), Spanned::new(inner, at))]))
        };
        let body = nest(
            "data",
            nest("attributes", nest("properties", BodyNode::Map(properties))),
        );
        Some(OverlaySpec {
            overlay: self.profile_mapping.clone(),
            disable: None,
            description: None,
            lane: None,
            matcher: None,
            select,
            compute: IndexMap::new(),
            when: Patch::Keep,
            require: Patch::Keep,
            for_each: Patch::Keep,
            once_per: Patch::Keep,
            waits_for: Patch::Keep,
            coalesce: Patch::Keep,
            emit: Some(EmitOverlay {
                endpoint: None,
                body: Some(Spanned::new(body, at)),
            }),
            examples: Vec::new(),
            tests: Vec::new(),
            base_tests: true,
            base_examples: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(yaml: &str) -> Spanned<BodyNode> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn json(node: &Spanned<BodyNode>) -> serde_json::Value {
        serde_json::to_value(node).unwrap()
    }

    fn files(text: &str) -> Files {
        let mut files = Files::default();
        files.add(std::sync::Arc::new(crate::diagnostic::SourceFile {
            name: "o.yaml".into(),
            text: text.into(),
        }));
        files
    }

    fn removals(files: &Files) -> Removals<'_> {
        Removals {
            mapping: "m".into(),
            files,
            found: Vec::new(),
            removed: Vec::new(),
        }
    }

    #[test]
    fn merge_patch_merges_maps_deletes_nulls_and_replaces_the_rest() {
        let patch = "a: {c: null, d: [3], f: {g: 1}}\ne: why\n";
        let files = files(patch);
        let mut problems = removals(&files);
        let mut base = body("a: {b: 1, c: 2, d: [1, 2]}\ne: x\n");
        problems.merge_patch(&mut base, body(patch), "");
        assert_eq!(
            json(&base),
            serde_json::json!({"a": {"b": 1, "d": [3], "f": {"g": 1}}, "e": "why"})
        );
        assert!(problems.found.is_empty());
    }

    #[test]
    fn entries_are_replaced_in_place_added_at_the_end_or_removed() {
        let files = files("");
        let mut problems = removals(&files);
        let at = Position::new(1, 1);
        let mut base: IndexMap<String, Spanned<i32>> = IndexMap::from([
            ("a".into(), Spanned::new(1, at)),
            ("b".into(), Spanned::new(2, at)),
        ]);
        problems.entries(
            &mut base,
            IndexMap::from([
                ("a".into(), Spanned::new(Some(Spanned::new(10, at)), at)),
                ("c".into(), Spanned::new(Some(Spanned::new(3, at)), at)),
                ("b".into(), Spanned::new(None, at)),
            ]),
            RemovedKind::Selection,
        );
        assert_eq!(
            base.into_iter()
                .map(|(k, v)| (k, v.value))
                .collect::<Vec<_>>(),
            [("a".into(), 10), ("c".into(), 3)]
        );
        assert!(problems.found.is_empty());
    }

    #[test]
    fn null_removes_an_optional_key_and_absence_keeps_it() {
        let overlay: OverlaySpec = serde_saphyr::from_str("overlay: x\nwhen: null\n").unwrap();
        assert!(matches!(overlay.when, Patch::Remove(_)));
        assert!(matches!(overlay.once_per, Patch::Keep));
    }
}
