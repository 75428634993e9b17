//! The published resources as every discovery stream shares them: per type, a table of resources
//! each encoded once per version (the bytes of one `resources` entry of a response, shared by
//! reference between streams), the names that changed since the previous catalog, and compact
//! versions (`u64`) to compare with what a proxy holds. A type whose resources did not change
//! keeps the very same table (`Arc::ptr_eq`), so a stream skips it without looking inside.
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use trellis_api::type_url;

use crate::resources::{Resource, Snapshot};

/// A resource name, shared between the catalog's tables and the streams' subscriptions.
pub type Name = Arc<str>;

pub const TYPES: usize = type_url::ALL.len();

/// The field number of `DeltaDiscoveryResponse.resources`.
const RESOURCES_FIELD: u32 = 3;

/// The index of a type URL in `type_url::ALL`.
pub fn type_index(type_url: &str) -> Option<usize> {
    type_url::ALL.iter().position(|t| *t == type_url)
}

/// The compact form of a version string. Control-plane versions are 16 hex digits (8 bytes of a
/// SHA-256) and map one to one; anything else a proxy sends is hashed (FNV-1a) with the top bit
/// set, which no hex version of ours can equal unless it collides in the other 63 bits.
pub fn version_key(version: &str) -> u64 {
    if version.len() == 16 {
        if let Ok(v) = u64::from_str_radix(version, 16) {
            return v;
        }
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in version.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash | (1 << 63)
}

/// One resource at one version.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    /// Key, length and the `Resource {name, version, payload}` message: ready to be appended to a
    /// `DeltaDiscoveryResponse`.
    pub encoded: Bytes,
}

impl Entry {
    fn new(name: &str, resource: &Resource) -> Entry {
        let wire = trellis_api::discovery::Resource {
            name: name.to_owned(),
            version: resource.version.clone(),
            payload: resource.payload.clone(),
        };
        let len = prost::Message::encoded_len(&wire);
        let mut buf = BytesMut::with_capacity(1 + encoded_len_varint(len as u64) + len);
        encode_key(RESOURCES_FIELD, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        // A BytesMut grows as needed, so encoding into it cannot fail.
        let _ = prost::Message::encode(&wire, &mut buf);
        Entry {
            version: version_key(&resource.version),
            encoded: buf.freeze(),
        }
    }
}

/// Every resource of one type, by name.
#[derive(Debug, Default)]
pub struct Table {
    pub entries: BTreeMap<Name, Entry>,
}

impl Table {
    pub fn version(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|e| e.version)
    }
}

/// One type as of one catalog.
#[derive(Debug, Clone, Default)]
pub struct TypeView {
    pub table: Arc<Table>,
    /// Names added, changed or removed since the previous catalog, sorted.
    pub changed: Arc<[Name]>,
}

/// How many catalogs back a stream can be brought up to date by changed names; a stream further
/// behind (one subscribed only to names that have not changed for that long) compares its whole
/// subscription instead.
const HISTORY: usize = 64;

/// What one catalog changed, by type, relative to the one before it.
#[derive(Debug, Clone)]
struct Changes {
    previous_version: u64,
    changed: [Arc<[Name]>; TYPES],
}

/// Every type, as of one config version.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub system_version: u64,
    /// The system version `changed` is relative to (0 for the first catalog).
    pub previous_version: u64,
    pub types: [TypeView; TYPES],
    /// The changes of the latest catalogs, this one last.
    history: Arc<VecDeque<Changes>>,
}

impl Catalog {
    /// The catalog for `snap`, sharing every entry (and every table) that did not change since
    /// `previous`.
    pub fn next(previous: Option<&Catalog>, snap: &Snapshot) -> Catalog {
        let types = std::array::from_fn(|i| {
            let old = previous.map(|p| &p.types[i].table);
            let current = snap.of_type(type_url::ALL[i]);
            view(old, current)
        });
        let previous_version = previous.map_or(0, |p| p.system_version);
        let mut history = previous.map_or_else(VecDeque::new, |p| (*p.history).clone());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(Changes {
            previous_version,
            changed: std::array::from_fn(|i: usize| types[i].changed.clone()),
        });
        Catalog {
            system_version: snap.system_version,
            previous_version,
            types,
            history: Arc::new(history),
        }
    }

    pub fn of(&self, type_index: usize) -> &TypeView {
        &self.types[type_index]
    }

    /// The names of one type changed after catalog `since` up to this one, sorted; None when
    /// `since` is older than the history.
    pub fn changed_since(&self, type_index: usize, since: u64) -> Option<Cow<'_, [Name]>> {
        if since == self.system_version {
            return Some(Cow::Borrowed(&[]));
        }
        let mut sets = Vec::new();
        for changes in self.history.iter().rev() {
            sets.push(&changes.changed[type_index]);
            if changes.previous_version == since {
                return Some(match sets.as_slice() {
                    [one] => Cow::Borrowed(&one[..]),
                    _ => {
                        let union: BTreeSet<&Name> = sets.iter().flat_map(|s| s.iter()).collect();
                        Cow::Owned(union.into_iter().cloned().collect())
                    }
                });
            }
            if changes.previous_version < since {
                break;
            }
        }
        None
    }
}

fn view(old: Option<&Arc<Table>>, current: Option<&BTreeMap<String, Resource>>) -> TypeView {
    let empty = BTreeMap::new();
    let current = current.unwrap_or(&empty);
    let old_entries = old.map(|t| &t.entries);
    let mut changed = Vec::new();
    let mut entries = BTreeMap::new();
    for (name, resource) in current {
        let version = version_key(&resource.version);
        match old_entries.and_then(|o| o.get_key_value(name.as_str())) {
            Some((shared, entry)) if entry.version == version => {
                entries.insert(shared.clone(), entry.clone());
            }
            _ => {
                let entry = Entry::new(name, resource);
                let name: Name = name.as_str().into();
                changed.push(name.clone());
                entries.insert(name, entry);
            }
        }
    }
    if let Some(old) = old_entries {
        changed.extend(old.keys().filter(|n| !current.contains_key(&***n)).cloned());
    }
    changed.sort();
    match old {
        Some(old) if changed.is_empty() => TypeView {
            table: old.clone(),
            changed: Arc::from(Vec::new()),
        },
        _ => TypeView {
            table: Arc::new(Table { entries }),
            changed: changed.into(),
        },
    }
}

/// The encoded length of a string field, written even when empty (as a repeated one is).
pub fn field_len(field: u32, value: &str) -> usize {
    prost::encoding::key_len(field) + encoded_len_varint(value.len() as u64) + value.len()
}

/// Appends a string field, even when empty (an element of a repeated field).
pub fn put_field(buf: &mut BytesMut, field: u32, value: &str) {
    encode_key(field, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

/// The encoded length of a singular string field: none when empty, as proto3 leaves it out.
pub fn string_len(field: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(field, value)
    }
}

/// Appends a singular string field unless it is empty.
pub fn put_string(buf: &mut BytesMut, field: u32, value: &str) {
    if !value.is_empty() {
        put_field(buf, field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64, endpoints: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot {
            system_version: version,
            ..Default::default()
        };
        for t in type_url::ALL {
            s.resources.insert(t, BTreeMap::new());
        }
        let res = |v: &str| Resource {
            version: format!("{v:0>16}"),
            payload: v.as_bytes().to_vec(),
        };
        s.resources.insert(
            type_url::ENDPOINTS,
            endpoints
                .iter()
                .map(|(n, v)| (n.to_string(), res(v)))
                .collect(),
        );
        s
    }

    #[test]
    fn entries_encode_as_a_response_resources_field() {
        let c = Catalog::next(None, &snap(1, &[("a", "1")]));
        let e = &c.of(3).table.entries["a"];
        let rsp = <trellis_api::discovery::DeltaDiscoveryResponse as prost::Message>::decode(
            e.encoded.clone(),
        )
        .unwrap();
        assert_eq!(rsp.resources.len(), 1);
        assert_eq!(rsp.resources[0].name, "a");
        assert_eq!(rsp.resources[0].version, "0000000000000001");
        assert_eq!(rsp.resources[0].payload, b"1");
        assert_eq!(e.version, 1);
    }

    #[test]
    fn unchanged_types_and_entries_are_shared_and_changes_listed() {
        let first = Catalog::next(None, &snap(1, &[("a", "1"), ("b", "1"), ("c", "1")]));
        assert_eq!(
            &*first.of(3).changed,
            [Name::from("a"), "b".into(), "c".into()]
        );
        let second = Catalog::next(
            Some(&first),
            &snap(2, &[("a", "2"), ("b", "1"), ("d", "1")]),
        );
        assert_eq!(second.previous_version, 1);
        assert_eq!(
            &*second.of(3).changed,
            [Name::from("a"), "c".into(), "d".into()]
        );
        let (old_b, new_b) = (
            &first.of(3).table.entries["b"],
            &second.of(3).table.entries["b"],
        );
        assert_eq!(
            old_b.encoded.as_ptr(),
            new_b.encoded.as_ptr(),
            "encoded once"
        );
        for t in [0, 1, 2, 4] {
            assert!(Arc::ptr_eq(&first.of(t).table, &second.of(t).table));
            assert!(second.of(t).changed.is_empty());
        }
        let third = Catalog::next(
            Some(&second),
            &snap(3, &[("a", "2"), ("b", "1"), ("d", "1")]),
        );
        assert!(Arc::ptr_eq(&second.of(3).table, &third.of(3).table));
    }

    #[test]
    fn changes_since_an_older_catalog_are_the_union() {
        let mut c = Catalog::next(None, &snap(1, &[("a", "1"), ("b", "1"), ("c", "1")]));
        for (v, items) in [
            (2, [("a", "2"), ("b", "1"), ("c", "1")]),
            (3, [("a", "2"), ("b", "3"), ("c", "1")]),
            (4, [("a", "4"), ("b", "3"), ("c", "1")]),
        ] {
            c = Catalog::next(Some(&c), &snap(v, &items));
        }
        fn names(c: &Catalog, since: u64) -> Option<Vec<String>> {
            let changed = c.changed_since(3, since)?;
            Some(changed.iter().map(|n| n.to_string()).collect())
        }
        let strings = |list: &[&str]| Some(list.iter().map(|n| n.to_string()).collect());
        assert_eq!(names(&c, 4), strings(&[]));
        assert_eq!(names(&c, 3), strings(&["a"]));
        assert_eq!(names(&c, 1), strings(&["a", "b"]));
        assert_eq!(names(&c, 0), strings(&["a", "b", "c"]));
        assert_eq!(c.changed_since(0, 2), Some(Cow::Borrowed(&[][..])));
        for v in 5..(5 + HISTORY as u64) {
            c = Catalog::next(Some(&c), &snap(v, &[("a", "4"), ("b", "3"), ("c", "1")]));
        }
        assert_eq!(names(&c, 1), None, "older than the history");
    }

    #[test]
    fn version_keys_are_exact_for_ours_and_distinct_for_others() {
        assert_eq!(version_key("00000000000000ff"), 255);
        assert_ne!(version_key("v1"), version_key("v2"));
        assert!(version_key("v1") >> 63 == 1);
    }
}
