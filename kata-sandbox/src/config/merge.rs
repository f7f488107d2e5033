//! Deep merge of TOML trees, remembering which layer set each key.
//!
//! Kata merges drop-ins this way: tables merge key by key, anything else (values, arrays, a
//! table replaced by a value or the reverse) is replaced by the later layer. The origin of every
//! leaf key is kept so an error about a key can name the file (or annotation) that set it.

use std::collections::BTreeMap;

/// Dotted key path (`hypervisor.qemu.default_memory`) → label of the layer that set it.
pub(crate) type Origins = BTreeMap<String, String>;

/// Merges `overlay` into `base`; keys `overlay` sets are recorded in `origins` as `label`.
pub(crate) fn merge(
    base: &mut toml::Value,
    overlay: &toml::Value,
    label: &str,
    origins: &mut Origins,
) {
    merge_at(base, overlay, "", label, origins);
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn merge_at(
    base: &mut toml::Value,
    overlay: &toml::Value,
    prefix: &str,
    label: &str,
    origins: &mut Origins,
) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                let path = join(prefix, k);
                match b.get_mut(k) {
                    Some(existing) if existing.is_table() && v.is_table() => {
                        merge_at(existing, v, &path, label, origins);
                    }
                    _ => {
                        forget(origins, &path);
                        record(v, &path, label, origins);
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => {
            forget(origins, prefix);
            record(o, prefix, label, origins);
            *b = o.clone();
        }
    }
}

/// Records every leaf under `value` (at `path`) as set by `label`.
fn record(value: &toml::Value, path: &str, label: &str, origins: &mut Origins) {
    match value {
        toml::Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                record(v, &join(path, k), label, origins);
            }
        }
        _ => {
            origins.insert(path.to_string(), label.to_string());
        }
    }
}

/// Drops the origins of `path` and everything under it (it is being replaced).
fn forget(origins: &mut Origins, path: &str) {
    let below = format!("{path}.");
    origins.retain(|k, _| k != path && !k.starts_with(&below));
}

/// The layer that set `path`, or the nearest enclosing table that was set as a whole.
pub(crate) fn origin_of<'a>(origins: &'a Origins, path: &str) -> Option<&'a str> {
    let mut p = path;
    loop {
        if let Some(label) = origins.get(p) {
            return Some(label);
        }
        match p.rfind('.') {
            Some(i) => p = &p[..i],
            None => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> toml::Value {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn later_keys_win_and_tables_merge() {
        let mut base = toml::Value::Table(Default::default());
        let mut origins = Origins::new();
        merge(
            &mut base,
            &v("a = 1\n[t]\nx = \"base\"\ny = [1, 2]\n"),
            "base",
            &mut origins,
        );
        merge(
            &mut base,
            &v("[t]\nx = \"dropin\"\ny = [3]\nz = true\n"),
            "10.toml",
            &mut origins,
        );
        assert_eq!(base["a"].as_integer(), Some(1));
        assert_eq!(base["t"]["x"].as_str(), Some("dropin"));
        assert_eq!(base["t"]["y"].as_array().unwrap().len(), 1);
        assert_eq!(base["t"]["z"].as_bool(), Some(true));
        assert_eq!(origin_of(&origins, "a"), Some("base"));
        assert_eq!(origin_of(&origins, "t.x"), Some("10.toml"));
        assert_eq!(origin_of(&origins, "t.nothing"), None);
    }

    #[test]
    fn replacing_a_table_forgets_its_keys() {
        let mut base = toml::Value::Table(Default::default());
        let mut origins = Origins::new();
        merge(&mut base, &v("[t]\nx = 1\n"), "base", &mut origins);
        merge(&mut base, &v("t = 5\n"), "d.toml", &mut origins);
        assert_eq!(base["t"].as_integer(), Some(5));
        assert_eq!(origin_of(&origins, "t"), Some("d.toml"));
        assert!(!origins.contains_key("t.x"));
    }
}
