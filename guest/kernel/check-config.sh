#!/usr/bin/env bash
# check-config.sh FRAGMENT DOTCONFIG
#
# Verifies that every option the fragment asks for survived `make olddefconfig`:
#   CONFIG_X=y              must appear as CONFIG_X=y in .config
#   CONFIG_X=<value>        must appear with the same value
#   # CONFIG_X is not set   must not be set (absent, or "is not set")
# Kconfig silently drops an option whose dependencies are not met, so without
# this check a missing dependency only shows up as a guest that cannot mount
# or probe something. Then the options the host side requires whatever the
# fragment says (PCI hot-plug, VFIO for vfio_mode = "vfio"), each named with the
# feature that needs it. Exits 1 naming every option that did not land.
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

# Options the host side relies on, whatever the fragment says: deleting one from the fragment
# (or a Kconfig dependency dropping it) fails here naming the feature that needs it.
required=(
  "CONFIG_HOTPLUG_PCI_PCIE=y|PCIe hot-plug (root and switch ports: hot-plugged VFIO, block)"
  "CONFIG_HOTPLUG_PCI_SHPC=y|bridge-port hot-plug (a pci-bridge's slots are SHPC slots)"
  "CONFIG_VFIO=y|vfio_mode = \"vfio\" (the container drives its device through /dev/vfio)"
  "CONFIG_VFIO_PCI=y|vfio_mode = \"vfio\" (the agent binds the function to vfio-pci)"
  "CONFIG_VFIO_NOIOMMU=y|vfio_mode = \"vfio\" in a guest without a vIOMMU (/dev/vfio/noiommu-N)"
  "CONFIG_VFIO_PCI_MMAP=y|vfio_mode = \"vfio\" (a BAR mapped into the container's memory)"
  "CONFIG_VIRTIO_BALLOON=y|reclaim_guest_freed_memory (the balloon's free page reporting)"
  "CONFIG_PAGE_REPORTING=y|reclaim_guest_freed_memory (freed pages reported to the host)"
)
for entry in "${required[@]}"; do
  line=${entry%%|*}
  if ! grep -qxF -- "$line" "$dot"; then
    name=${line%%=*}
    got=$(grep -E "^(# )?${name}[= ]" "$dot" || true)
    missing+=("$line, required for ${entry#*|} (got: ${got:-absent})")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "check-config: ${#missing[@]} option(s) of $frag did not land in $dot:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "check-config: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$frag") options of $(basename "$frag") landed, and the ${#required[@]} the host side requires"
