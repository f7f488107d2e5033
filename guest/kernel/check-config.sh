#!/usr/bin/env bash
# check-config.sh FRAGMENT DOTCONFIG
#
# Verifies that every option the fragment asks for survived `make olddefconfig`:
#   CONFIG_X=y              must appear as CONFIG_X=y in .config
#   CONFIG_X=<value>        must appear with the same value
#   # CONFIG_X is not set   must not be set (absent, or "is not set")
# Kconfig silently drops an option whose dependencies are not met, so without
# this check a missing dependency only shows up as a guest that cannot mount
# or probe something. Exits 1 naming every option that did not land.
set -euo pipefail

frag=${1:?usage: check-config.sh FRAGMENT DOTCONFIG}
dot=${2:?usage: check-config.sh FRAGMENT DOTCONFIG}

missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      name=${line%%=*}
      if ! grep -qxF -- "$line" "$dot"; then
        got=$(grep -E "^(# )?${name}[= ]" "$dot" || true)
        missing+=("$line (got: ${got:-absent})")
      fi
      ;;
    "# CONFIG_"*" is not set")
      name=${line#\# }
      name=${name%% *}
      if grep -qE "^${name}=" "$dot"; then
        missing+=("$line (got: $(grep -E "^${name}=" "$dot"))")
      fi
      ;;
  esac
done < "$frag"

if [ "${#missing[@]}" -gt 0 ]; then
  echo "check-config: ${#missing[@]} option(s) of $frag did not land in $dot:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "check-config: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$frag") options of $(basename "$frag") landed"
