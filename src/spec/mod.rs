//! Mapping specs as written: the YAML a consultant edits, with the position of every value.
//!
//! This is the "low" half of the two-phase design (ripgrep's raw versus built config): plain
//! serde structs that mirror the file, parsed strictly (`deny_unknown_fields`), keeping spans so
//! that the compiler in [`crate::engine`] can point at the exact line of a bad path or template.
//! Nothing here interprets JSONPath or templates; nothing here touches a record.

mod load;
mod overlay;
mod rules;
mod settings;
mod spanned;

pub use load::{
    CLIENT_FILE, Example, MappingSet, SpecFile, builtin_example, count_specs, load_client,
    load_dir, load_embedded, load_texts, parse_mapping, queries_beside,
};
pub use overlay::{ClientConfig, OverlaySpec, Removed, RemovedKind};
pub(crate) use rules::{did_you_mean, key_position};

pub use settings::{ConsentSettings, MarketplaceSettings, Metrics, RateLimitSettings, Settings};

use indexmap::IndexMap;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use spanned::Spanned;
use std::fmt;

/// One mapping: which deliveries it applies to, what it reads, and the request it emits.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Unique within a set; appears in every request and error the mapping produces.
    pub name: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Which delivery lane the requests travel in.
    pub lane: Spanned<Lane>,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Named values picked from the record with JSONPath.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub select: IndexMap<String, Spanned<SelectSpec>>,
    /// Named expressions over the selections, evaluated in order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub compute: IndexMap<String, Spanned<String>>,
    /// An expression that must be true for the mapping to emit anything.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub when: Option<Spanned<String>>,
    /// Values that must not be empty after compute; otherwise the record is rejected.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub require: Option<Spanned<OneOrMany<String>>>,
    /// Fan-out: `NAME in EXPRESSION`, one request per element.
    #[serde(skip_serializing_if = "Option::is_none", default, rename = "for")]
    pub for_each: Option<Spanned<String>>,
    /// A template for a key: the mapping emits once per distinct key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub once_per: Option<Spanned<String>>,
    /// Hold each request until a request of another mapping, with the given once-per key, has
    /// been accepted (a Fulfilled Order waits for its order's Placed Order).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub waits_for: Option<WaitsForSpec>,
    /// Keep only the newest of several pending requests with the same key, and drop one older
    /// than what was already applied (profile updates, versioned by the source's updatedAt).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coalesce: Option<CoalesceSpec>,
    pub emit: EmitSpec,
    /// Sample deliveries (paths relative to this file) that `validate` renders and checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Spanned<String>>,
    /// Deliveries and the requests this mapping must make from them, run by `marketsync test`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestSpec>,
}

/// Body fields (dotted paths, or `body`/`endpoint`) and the values a request must have.
pub type ExpectedRequest = IndexMap<String, Spanned<serde_json::Value>>;

/// A test a consultant writes beside the mapping: one delivery and what must come of it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: Spanned<String>,
    /// A file (relative to this spec) holding one delivery, or the delivery written inline.
    pub delivery: Spanned<serde_json::Value>,
    /// This mapping's requests, in order: each lists body fields (dotted paths such as
    /// `data.attributes.value`) that must equal the given value, or `body` for the whole
    /// body. `[]` means no request at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Spanned<Vec<ExpectedRequest>>>,
    /// The mapping must reject the delivery with an error containing this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Order events: sent first, never behind profile work.
    Transaction,
    /// Attribute and consent syncs: throttled first at peak.
    Profile,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Transaction => "transaction",
            Lane::Profile => "profile",
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The object types (`__typename`) this mapping reads.
    #[serde(rename = "type")]
    pub types: Spanned<OneOrMany<String>>,
    /// Event names (`create`, `update`, `backfill`); left out means any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub events: Option<Spanned<OneOrMany<String>>>,
    /// Conditions on the payload, all of which must hold.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Spanned<ConditionSpec>>,
}

/// One condition: a JSONPath and a test on the nodes it selects, or a group of alternatives.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<Spanned<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub equals: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub contains: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exists: Option<bool>,
    /// Holds when any of the listed conditions holds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub any: Option<Vec<Spanned<ConditionSpec>>>,
}

/// A selection: a JSONPath string, or the long form with cardinality and fallbacks.
#[derive(Debug)]
pub struct SelectSpec {
    pub path: String,
    /// Take every match as a list instead of exactly one value.
    pub many: bool,
    /// A missing value is `none` rather than an error.
    pub optional: bool,
    /// The value used when the path matches nothing.
    pub default: Option<serde_json::Value>,
    /// Evaluate the path against another selection instead of the record.
    pub from: Option<String>,
    /// What messages call a selection the consultant did not write as one: a
    /// `profile_attributes` entry becomes a selection with a made-up name, and is reported as
    /// `profile_attributes.Tier`. `None` for selections written under `select:`.
    pub label: Option<String>,
}

impl SelectSpec {
    /// How messages name the selection `field`: as the consultant wrote it.
    pub fn describe(&self, field: &str) -> String {
        match &self.label {
            Some(label) => label.clone(),
            None => format!("selection `{field}`"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectLongForm {
    path: String,
    #[serde(default)]
    many: bool,
    #[serde(default)]
    optional: bool,
    #[serde(default, deserialize_with = "present")]
    default: Option<serde_json::Value>,
    #[serde(default)]
    from: Option<String>,
}

impl<'de> Deserialize<'de> for SelectSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SelectVisitor;
        impl<'de> Visitor<'de> for SelectVisitor {
            type Value = SelectSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSONPath string or a map with `path`")
            }
            fn visit_str<E: de::Error>(self, path: &str) -> Result<SelectSpec, E> {
                Ok(SelectSpec {
                    path: path.to_owned(),
                    many: false,
                    optional: false,
                    default: None,
                    from: None,
                    label: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SelectSpec, A::Error> {
                let long = SelectLongForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SelectSpec {
                    path: long.path,
                    many: long.many,
                    optional: long.optional,
                    default: long.default,
                    from: long.from,
                    label: None,
                })
            }
        }
        deserializer.deserialize_any(SelectVisitor)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WaitsForSpec {
    /// The mapping whose request must be accepted first.
    pub mapping: Spanned<String>,
    /// A template giving that mapping's once-per key.
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSpec {
    /// A template: requests with the same key replace each other.
    pub key: Spanned<String>,
    /// A template: the newer version wins (ISO 8601 timestamps compare correctly as text once
    /// normalised with `iso8601`).
    pub version: Spanned<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    /// `POST /api/events` and the like.
    pub endpoint: Spanned<String>,
    /// The request body; string leaves are templates, `$for`/`$yield` build lists.
    pub body: Spanned<BodyNode>,
}

impl Serialize for SelectSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if !self.many && !self.optional && self.default.is_none() && self.from.is_none() {
            return serializer.serialize_str(&self.path);
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("path", &self.path)?;
        if self.many {
            map.serialize_entry("many", &true)?;
        }
        if self.optional {
            map.serialize_entry("optional", &true)?;
        }
        if let Some(default) = &self.default {
            map.serialize_entry("default", default)?;
        }
        if let Some(from) = &self.from {
            map.serialize_entry("from", from)?;
        }
        map.end()
    }
}

/// A body as written. Kept as a tree of spanned nodes so a template error points at its line.
#[derive(Debug)]
pub enum BodyNode {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    List(Vec<Spanned<BodyNode>>),
    Map(IndexMap<String, Spanned<BodyNode>>),
}

impl<'de> Deserialize<'de> for BodyNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = BodyNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a request body value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<BodyNode, E> {
                Ok(BodyNode::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<BodyNode, E> {
                Ok(BodyNode::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BodyNode, E> {
                Ok(BodyNode::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BodyNode, E> {
                Ok(BodyNode::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BodyNode, E> {
                Ok(BodyNode::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<BodyNode, E> {
                serde_json::Number::from_f64(v)
                    .map(BodyNode::Number)
                    .ok_or_else(|| E::custom("a number that JSON cannot hold"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BodyNode, E> {
                Ok(BodyNode::String(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BodyNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(BodyNode::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyNode, A::Error> {
                let mut entries = IndexMap::new();
                while let Some((key, value)) = map.next_entry::<String, Spanned<BodyNode>>()? {
                    if entries.insert(key.clone(), value).is_some() {
                        return Err(de::Error::custom(format!("duplicate key `{key}`")));
                    }
                }
                Ok(BodyNode::Map(entries))
            }
        }
        deserializer.deserialize_any(BodyVisitor)
    }
}

impl Serialize for BodyNode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BodyNode::Null => serializer.serialize_unit(),
            BodyNode::Bool(v) => serializer.serialize_bool(*v),
            BodyNode::Number(n) => n.serialize(serializer),
            BodyNode::String(text) => serializer.serialize_str(text),
            BodyNode::List(items) => serializer.collect_seq(items),
            BodyNode::Map(entries) => serializer.collect_map(entries),
        }
    }
}

/// A key that is present is `Some`, even when its value is `null` (which serde would read as
/// absent): `default: null` and `equals: null` mean something, and must not silently vanish.
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// `type: Invoice` or `type: [Invoice, Order]`.
#[derive(Debug)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape<T> {
            One(T),
            Many(Vec<T>),
        }
        match Shape::deserialize(deserializer)? {
            Shape::One(one) => Ok(OneOrMany(vec![one])),
            Shape::Many(many) => Ok(OneOrMany(many)),
        }
    }
}
