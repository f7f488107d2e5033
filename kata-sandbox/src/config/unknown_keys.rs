//! Finding keys a file has that the typed configuration does not know.
//!
//! The typed configuration, serialised back to a TOML tree, has every key it knows (all
//! fields are written out). A key of the file that is absent from that tree was ignored by
//! deserialisation: it is unknown (a typo, or a key of a newer Kata).

/// Old spellings serde accepts as aliases: `(alias, key)`.
const ALIASES: &[(&str, &str)] = &[
    ("seccompsandbox", "seccomp_sandbox"),
    ("dbg_monitor_socket", "extra_monitor_socket"),
];

/// Dotted paths of the keys of `raw` that are not in `known`.
pub(crate) fn unknown_keys(raw: &toml::Value, known: &toml::Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(raw, known, "", &mut out);
    out
}

fn walk(raw: &toml::Value, known: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    let path = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (raw, known) {
        (toml::Value::Table(r), toml::Value::Table(k)) => {
            for (key, value) in r {
                match k.get(key) {
                    Some(kv) => walk(value, kv, &path(key), out),
                    None => {
                        let alias = ALIASES
                            .iter()
                            .any(|(a, canonical)| a == key && k.contains_key(*canonical));
                        if !alias {
                            out.push(path(key));
                        }
                    }
                }
            }
        }
        (toml::Value::Array(r), toml::Value::Array(k)) => {
            // Arrays of tables: every element has the shape of the typed elements.
            if let Some(schema) = k.first() {
                for (i, value) in r.iter().enumerate() {
                    walk(value, schema, &format!("{prefix}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_the_types_do_not_have() {
        let raw: toml::Value = toml::from_str(
            "[hypervisor.qemu]\ndefault_vcpus = 1\nnew_key = 2\nseccompsandbox = \"on\"\n[nothing]\nx = 1\n",
        )
        .unwrap();
        let known: toml::Value =
            toml::from_str("[hypervisor.qemu]\ndefault_vcpus = 1\nseccomp_sandbox = \"\"\n")
                .unwrap();
        assert_eq!(
            unknown_keys(&raw, &known),
            ["hypervisor.qemu.new_key", "nothing"]
        );
    }
}
