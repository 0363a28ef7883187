//! Keyed state that forgets quiet keys, in event time.
//!
//! Each key keeps a value and the latest event time it was touched at.
//! [`KeyedState::expire`] with watermark `W` removes every key last touched
//! before `W - ttl`: the watermark says no event older than `W` is still
//! coming (bar late ones), so such a key has been quiet for at least `ttl` of
//! event time. Memory is therefore bounded by the keys active within `ttl`
//! of event time, not by every key ever seen, and expiry is the same on every
//! replay (it never looks at the wall clock).
//!
//! A key that comes back after expiring starts again from `V::default()`:
//! rules that need longer memory need a longer `ttl` (or a profile loaded
//! from the lake).
//!
//! Expiry walks an index by last-seen time, so it costs the keys it removes,
//! not the keys it keeps. [`KeyedState::approx_bytes`] estimates the memory;
//! the state is serialisable for the checkpoint (keys of any type; the index
//! is rebuilt on load).

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;

use serde::{Deserialize, Serialize};

use crate::{Error, EventTime, Result};

/// Bytes a B-tree spends per entry beyond the entry itself (node headers,
/// spare slots at the typical two-thirds fill), a rough figure.
const BTREE_OVERHEAD: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry<V> {
    last_seen: EventTime,
    value: V,
}

/// Values per key with event-time expiry (see the module docs).
#[derive(Clone, Debug)]
pub struct KeyedState<K, V> {
    ttl_us: i64,
    entries: BTreeMap<K, Entry<V>>,
    /// (last seen, key) of every entry.
    by_time: BTreeSet<(EventTime, K)>,
}

impl<K: Ord + Clone, V: Default> KeyedState<K, V> {
    /// State whose keys expire `ttl_us` of event time after their last event.
    pub fn new(ttl_us: i64) -> Result<Self> {
        if ttl_us <= 0 {
            return Err(Error::setting(
                "state.ttl_us",
                format!("must be a positive number of microseconds, got {ttl_us}"),
            ));
        }
        Ok(KeyedState {
            ttl_us,
            entries: BTreeMap::new(),
            by_time: BTreeSet::new(),
        })
    }

    pub fn ttl_us(&self) -> i64 {
        self.ttl_us
    }

    /// The value of `key`, created with `V::default()` if absent, after
    /// noting an event at `t` (last seen only moves forward).
    pub fn upsert(&mut self, key: K, t: EventTime) -> &mut V {
        use std::collections::btree_map::Entry as E;
        match self.entries.entry(key) {
            E::Vacant(v) => {
                self.by_time.insert((t, v.key().clone()));
                &mut v
                    .insert(Entry {
                        last_seen: t,
                        value: V::default(),
                    })
                    .value
            }
            E::Occupied(o) => {
                if t > o.get().last_seen {
                    let key = o.key().clone();
                    self.by_time.remove(&(o.get().last_seen, key.clone()));
                    self.by_time.insert((t, key));
                }
                let e = o.into_mut();
                e.last_seen = e.last_seen.max(t);
                &mut e.value
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The value of `key` without noting an event.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// The event time `key` was last touched at.
    pub fn last_seen(&self, key: &K) -> Option<EventTime> {
        self.entries.get(key).map(|e| e.last_seen)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let e = self.entries.remove(key)?;
        self.by_time.remove(&(e.last_seen, key.clone()));
        Some(e.value)
    }

    /// Removes every key last seen before `watermark - ttl`; returns how many.
    pub fn expire(&mut self, watermark: EventTime) -> usize {
        let horizon = watermark.saturating_sub(self.ttl_us);
        let mut n = 0;
        while let Some((t, _)) = self.by_time.first()
            && *t < horizon
        {
            let (_, key) = self.by_time.pop_first().expect("first exists");
            self.entries.remove(&key);
            n += 1;
        }
        n
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, e)| (k, &e.value))
    }

    /// Estimated bytes held per key: the key twice (map and index), the
    /// value, two timestamps and the B-trees' overhead. Heap data a key or
    /// value owns (a `String`'s text, a `Vec`'s items) comes on top.
    pub fn approx_bytes_per_key() -> usize {
        2 * size_of::<K>() + size_of::<V>() + 2 * size_of::<EventTime>() + 2 * BTREE_OVERHEAD
    }

    /// Estimated bytes of the whole state ([`Self::approx_bytes_per_key`]
    /// times the keys).
    pub fn approx_bytes(&self) -> usize {
        self.len() * Self::approx_bytes_per_key()
    }
}

#[derive(Serialize)]
struct ReprRef<'a, K, V> {
    ttl_us: i64,
    entries: Vec<(&'a K, EventTime, &'a V)>,
}

#[derive(Deserialize)]
struct Repr<K, V> {
    ttl_us: i64,
    entries: Vec<(K, EventTime, V)>,
}

impl<K: Serialize, V: Serialize> Serialize for KeyedState<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ReprRef {
            ttl_us: self.ttl_us,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| (k, e.last_seen, &e.value))
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de, K, V> Deserialize<'de> for KeyedState<K, V>
where
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Repr::<K, V>::deserialize(d)?;
        if r.ttl_us <= 0 {
            return Err(serde::de::Error::custom("state ttl_us is not positive"));
        }
        let mut entries = BTreeMap::new();
        let mut by_time = BTreeSet::new();
        for (k, last_seen, value) in r.entries {
            by_time.insert((last_seen, k.clone()));
            entries.insert(k, Entry { last_seen, value });
        }
        Ok(KeyedState {
            ttl_us: r.ttl_us,
            entries,
            by_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keys_expire_in_event_time_and_state_stays_bounded() {
        let mut s: KeyedState<i64, u32> = KeyedState::new(100).unwrap();
        // 10,000 customers, each active once, time moving forward: with a
        // TTL of 100 and expiry as the watermark moves, only the keys of the
        // last 100 µs stay.
        let mut peak = 0;
        for t in 0..10_000 {
            *s.upsert(t, t) += 1;
            s.expire(t);
            peak = peak.max(s.len());
        }
        assert_eq!(peak, 101, "keys seen within [t - 100, t]");
        assert_eq!(s.expire(20_000), 101);
        assert!(s.is_empty());
    }

    #[test]
    fn touching_a_key_keeps_it_and_out_of_order_touches_do_not_age_it() {
        let mut s: KeyedState<&str, Vec<i64>> = KeyedState::new(50).unwrap();
        s.upsert("a", 100).push(100);
        s.upsert("b", 120).push(120);
        s.upsert("a", 160).push(160);
        s.upsert("a", 110).push(110);
        assert_eq!(s.last_seen(&"a"), Some(160));
        // Horizon 200 - 50 = 150: b (120) goes, a (160) stays.
        assert_eq!(s.expire(200), 1);
        assert_eq!(s.get(&"a"), Some(&vec![100, 160, 110]));
        assert_eq!(s.get(&"b"), None);
        // Exactly at the horizon stays; one past goes.
        assert_eq!(s.expire(210), 0);
        assert_eq!(s.expire(211), 1);
        // A key that returns starts from the default.
        assert!(s.upsert("a", 300).is_empty());
        assert_eq!(s.remove(&"a"), Some(vec![]));
        assert_eq!(s.expire(i64::MAX), 0);
        assert!(
            KeyedState::<u8, u8>::new(0)
                .unwrap_err()
                .to_string()
                .contains("state.ttl_us")
        );
    }

    #[test]
    fn state_survives_json_with_its_expiry_index() {
        let mut s: KeyedState<(i64, String), u64> = KeyedState::new(10).unwrap();
        *s.upsert((1, "x".into()), 5) += 3;
        *s.upsert((2, "y".into()), 20) += 1;
        let json = serde_json::to_string(&s).unwrap();
        let mut back: KeyedState<(i64, String), u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get(&(1, "x".into())), Some(&3));
        assert_eq!(back.expire(20), 1);
        assert_eq!(back.len(), 1);
        assert_eq!(
            back.approx_bytes(),
            KeyedState::<(i64, String), u64>::approx_bytes_per_key()
        );
        assert!(KeyedState::<i64, u64>::approx_bytes_per_key() >= 40);
    }
}
