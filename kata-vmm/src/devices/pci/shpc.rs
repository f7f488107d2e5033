//! A Standard Hot-Plug Controller (PCI SHPC 1.0) for the slots of a PCI-to-PCI bridge
//! ([`super::bridge::Bridge::with_shpc`]), as Linux's `shpchp` drives it.
//!
//! - **Where**: the working registers are memory mapped (the bridge's BAR0, base offset 0)
//!   and also reachable through the SHPC capability in configuration space (DWORD select at
//!   +2, the selected DWORD at +4), which is how `shpchp` finds the slot count and the
//!   base offset before it maps BAR0.
//! - **Registers** (by byte offset): slots available I/II (`0x04`, `0x08`: every slot
//!   33 MHz conventional), slot configuration (`0x0c`: the slot count, first device number 1,
//!   the physical slot number of the first, numbered upwards, an attention button), secondary
//!   bus configuration and programming interface 1 (`0x10`), command and command status
//!   (`0x14`, `0x16`), interrupt locator (`0x18`), SERR locator (`0x1c`), controller SERR-INT
//!   (`0x20`: the global, SERR, command and arbiter masks, command detected write 1 to
//!   clear) and one logical slot register per slot from `0x24` (state, power and attention
//!   indicators, power fault clear, MRL closed, presence, the five event latches write 1 to
//!   clear, their interrupt masks and two SERR masks).
//! - **Commands** complete at once (the busy bit never reads 1): a slot operation sets the
//!   slot's state (power only, enabled, disabled) and indicators; "33 MHz conventional" is
//!   the only bus mode taken (another is an invalid speed/mode); power-only-all and
//!   enable-all act on the occupied slots; anything else is an invalid command. Each sets
//!   command detected.
//! - **Events**: [`Shpc::insert`] (presence changed and the attention button pressed: the
//!   user inserted a card and pressed the button, which is what makes `shpchp` enable the
//!   slot after its 5 s), [`Shpc::press_button`] (the user asks for removal: `shpchp`
//!   disables the slot after 5 s, [`Shpc::is_disabled`]; acted on only once the slot
//!   [`Shpc::is_settled`]), [`Shpc::remove`] (presence changed, the card gone).
//! - **Interrupt**: [`Shpc::interrupt_pending`] is "some unmasked slot event or command
//!   completion, and the global mask off"; the bridge raises its MSI on its rising edge.
//!
//! Every width and offset is accepted; a register that does not exist reads 0 and keeps
//! nothing.

/// The capability id of an SHPC.
pub const CAP_ID: u8 = 0x0c;
/// The bytes of the working registers the BAR maps (a page).
pub const REGS_SIZE: u64 = 0x1000;
/// The most slots a controller has.
pub const MAX_SLOTS: u8 = 31;

/// Slot configuration: the slots are numbered upwards from the first's physical number.
const UPDOWN: u32 = 1 << 29;
/// Slot configuration: an attention button per slot.
const CONFIG_ATTN_BUTTON: u32 = 1 << 31;
/// Programming interface 1 (SHPC 1.0).
const PROG_INTERFACE: u32 = 1;

/// Controller SERR-INT: the global interrupt mask.
pub const GLOBAL_INTR_MASK: u32 = 1;
/// Controller SERR-INT: the command completion interrupt mask.
pub const COMMAND_INTR_MASK: u32 = 1 << 2;
/// Controller SERR-INT: the masks (global interrupt, global SERR, command, arbiter).
const SERR_INT_MASKS: u32 = 0xf;
/// Controller SERR-INT: command completion detected (write 1 to clear).
pub const COMMAND_DETECTED: u32 = 1 << 16;

/// Slot state: power only.
pub const STATE_POWER_ONLY: u8 = 1;
/// Slot state: enabled (powered and connected to the bus).
pub const STATE_ENABLED: u8 = 2;
/// Slot state: disabled.
pub const STATE_DISABLED: u8 = 3;
/// Indicator on.
pub const LED_ON: u8 = 1;
/// Indicator blinking (shpchp: a button press's 5 s, and the power-on or -off it starts).
pub const LED_BLINK: u8 = 2;
/// Indicator off.
pub const LED_OFF: u8 = 3;
/// Slot register: no power fault (the bit reads 1 when there is none).
const SLOT_NO_POWER_FAULT: u32 = 1 << 6;
/// Slot register: presence "7.5 W card" (anything but 3 is present).
const PRESENT_7_5W: u32 = 2;
/// Slot register: presence "empty".
const PRESENT_EMPTY: u32 = 3;
/// Slot event: presence changed.
pub const EVENT_PRESENCE: u8 = 1;
/// Slot event: attention button pressed.
pub const EVENT_BUTTON: u8 = 1 << 2;
/// The slot events (presence, isolated power fault, button, MRL, connected power fault).
const EVENTS: u8 = 0x1f;
/// The slot's interrupt and SERR masks (bits 24-30 of its register).
const SLOT_MASKS: u8 = 0x7f;

/// Command status: an invalid command.
pub const STATUS_INVALID_COMMAND: u16 = 1 << 2;
/// Command status: an invalid bus speed or mode.
pub const STATUS_INVALID_SPEED: u16 = 1 << 3;

/// One logical slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    state: u8,
    power_led: u8,
    attention_led: u8,
    present: bool,
    /// The event latches (bits 16-20 of the register, shifted down).
    events: u8,
    /// The interrupt and SERR masks (bits 24-30, shifted down).
    masks: u8,
}

/// The controller's registers.
#[derive(Debug, Clone)]
pub struct Shpc {
    slots: Vec<Slot>,
    /// The physical slot number of the first slot.
    first_number: u16,
    serr_int: u32,
    command: u16,
    command_status: u16,
    /// The DWORD the capability's select register names.
    select: u8,
}

impl Shpc {
    /// A controller of `slots` (1 to [`MAX_SLOTS`]) empty, disabled slots (devices 1, 2, ...
    /// of the bridge's secondary bus), the first with physical slot number `first_number`;
    /// every interrupt masked, as after a reset.
    pub fn new(slots: u8, first_number: u16) -> Self {
        let slot = Slot {
            state: STATE_DISABLED,
            power_led: LED_OFF,
            attention_led: LED_OFF,
            present: false,
            events: 0,
            masks: SLOT_MASKS,
        };
        Shpc {
            slots: vec![slot; usize::from(slots.clamp(1, MAX_SLOTS))],
            first_number: first_number & 0x7ff,
            serr_int: SERR_INT_MASKS,
            command: 0,
            command_status: 0,
            select: 0,
        }
    }

    /// How many slots it has.
    pub fn slots(&self) -> u8 {
        self.slots.len() as u8
    }

    /// The slot index of bus device `device` (slot `i` is device `i + 1`).
    fn index(&self, device: u8) -> Option<usize> {
        let i = usize::from(device.checked_sub(1)?);
        (i < self.slots.len()).then_some(i)
    }

    /// Marks the card in device `device`'s slot as there at boot: present, enabled, its
    /// power indicator on, no event.
    pub fn cold_plug(&mut self, device: u8) -> bool {
        let Some(i) = self.index(device) else {
            return false;
        };
        let s = &mut self.slots[i];
        s.present = true;
        s.state = STATE_ENABLED;
        s.power_led = LED_ON;
        true
    }

    /// A card inserted in device `device`'s slot and its attention button pressed: presence
    /// changed and button pressed latched. False for a slot it does not have.
    pub fn insert(&mut self, device: u8) -> bool {
        let Some(i) = self.index(device) else {
            return false;
        };
        let s = &mut self.slots[i];
        s.present = true;
        s.events |= EVENT_PRESENCE | EVENT_BUTTON;
        true
    }

    /// The attention button of device `device`'s slot pressed.
    pub fn press_button(&mut self, device: u8) -> bool {
        let Some(i) = self.index(device) else {
            return false;
        };
        self.slots[i].events |= EVENT_BUTTON;
        true
    }

    /// The card of device `device`'s slot taken out: empty, presence changed latched.
    pub fn remove(&mut self, device: u8) -> bool {
        let Some(i) = self.index(device) else {
            return false;
        };
        let s = &mut self.slots[i];
        s.present = false;
        s.events |= EVENT_PRESENCE;
        true
    }

    /// The state of device `device`'s slot ([`STATE_ENABLED`], ...), `None` past the slots.
    pub fn state(&self, device: u8) -> Option<u8> {
        self.index(device).map(|i| self.slots[i].state)
    }

    /// Whether the guest is done with device `device`'s slot for now, so a button press is
    /// acted on: no unmasked event latched for it, and the power indicator it commanded not
    /// blinking. shpchp blinks it from a button press until the slot is enabled or disabled,
    /// and ignores (powering on or off) or takes as a cancel (within its 5 s) a press
    /// meanwhile. False past the slots. One read can be true between shpchp's interrupt
    /// handler clearing the events and its worker blinking the indicator: the unplug
    /// ([`crate::devices::vfio::hotplug::release_bridge_slot`]) asks for two polls in a row.
    pub fn is_settled(&self, device: u8) -> bool {
        self.index(device).is_some_and(|i| {
            let s = &self.slots[i];
            let pending =
                self.serr_int & GLOBAL_INTR_MASK == 0 && s.events & !s.masks & EVENTS != 0;
            !pending && s.power_led != LED_BLINK
        })
    }

    /// Whether the guest has disabled device `device`'s slot (the card may be taken out).
    pub fn is_disabled(&self, device: u8) -> bool {
        self.state(device) == Some(STATE_DISABLED)
    }

    /// The interrupt locator: bit 0 an unmasked command completion, bit `i + 1` an unmasked
    /// event of slot `i`.
    fn interrupt_locator(&self) -> u32 {
        let mut loc = u32::from(
            self.serr_int & COMMAND_DETECTED != 0 && self.serr_int & COMMAND_INTR_MASK == 0,
        );
        for (i, s) in self.slots.iter().enumerate() {
            if s.events & !s.masks & EVENTS != 0 {
                loc |= 1 << (i + 1);
            }
        }
        loc
    }

    /// Whether the controller asks for an interrupt now.
    pub fn interrupt_pending(&self) -> bool {
        self.serr_int & GLOBAL_INTR_MASK == 0 && self.interrupt_locator() != 0
    }

    fn slot_register(&self, i: usize) -> u32 {
        let s = &self.slots[i];
        let presence = if s.present {
            PRESENT_7_5W
        } else {
            PRESENT_EMPTY
        };
        u32::from(s.state)
            | u32::from(s.power_led) << 2
            | u32::from(s.attention_led) << 4
            | SLOT_NO_POWER_FAULT
            | presence << 10
            | u32::from(s.events) << 16
            | u32::from(s.masks) << 24
    }

    /// The working register DWORD `index` (byte offset `4 * index`).
    pub fn read_dword(&self, index: usize) -> u32 {
        let n = self.slots.len() as u32;
        match index {
            0 => 0,
            1 => n,
            2 => 0,
            3 => n | 1 << 8 | u32::from(self.first_number) << 16 | UPDOWN | CONFIG_ATTN_BUTTON,
            4 => PROG_INTERFACE << 24,
            5 => u32::from(self.command) | u32::from(self.command_status) << 16,
            6 => self.interrupt_locator(),
            7 => 0,
            8 => self.serr_int,
            i if (9..9 + self.slots.len()).contains(&i) => self.slot_register(i - 9),
            _ => 0,
        }
    }

    /// A guest read of `data.len()` bytes at byte `offset` of the working registers (within
    /// one DWORD; anything else reads 0s).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let within = (offset % 4) as usize;
        if data.is_empty() || within + data.len() > 4 {
            return;
        }
        let v = self.read_dword((offset / 4) as usize).to_le_bytes();
        data.copy_from_slice(&v[within..within + data.len()]);
    }

    /// A guest write of `data` at byte `offset` of the working registers (within one DWORD).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let within = (offset % 4) as usize;
        if data.is_empty() || within + data.len() > 4 {
            return;
        }
        let index = (offset / 4) as usize;
        let mut v = [0u8; 4];
        v[within..within + data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(v);
        let written = |lo: usize, hi: usize| within < hi && within + data.len() > lo;
        match index {
            5 if written(0, 2) => self.run_command(v as u16),
            8 => {
                if written(0, 1) {
                    self.serr_int = self.serr_int & !SERR_INT_MASKS | v & SERR_INT_MASKS;
                }
                if written(2, 3) && v & COMMAND_DETECTED != 0 {
                    self.serr_int &= !COMMAND_DETECTED;
                }
            }
            i if (9..9 + self.slots.len()).contains(&i) => {
                let s = &mut self.slots[i - 9];
                if written(2, 3) {
                    s.events &= !((v >> 16) as u8 & EVENTS);
                }
                if written(3, 4) {
                    s.masks = (v >> 24) as u8 & SLOT_MASKS;
                }
            }
            _ => {}
        }
    }

    /// Runs the command `word` (code in bits 0-7, target slot number from 1 in bits 8-12).
    fn run_command(&mut self, word: u16) {
        self.command = word;
        let code = word as u8;
        let target = (word >> 8) as u8 & 0x1f;
        self.command_status = 0;
        match code {
            0x00..=0x3f => match self.index(target) {
                Some(i) => {
                    let s = &mut self.slots[i];
                    if code & 3 != 0 {
                        s.state = code & 3;
                    }
                    if code >> 2 & 3 != 0 {
                        s.power_led = code >> 2 & 3;
                    }
                    if code >> 4 & 3 != 0 {
                        s.attention_led = code >> 4 & 3;
                    }
                }
                None => self.command_status = STATUS_INVALID_COMMAND,
            },
            // Set bus segment speed/mode A: 33 MHz conventional PCI only.
            0x40 => {}
            0x41..=0x47 => self.command_status = STATUS_INVALID_SPEED,
            0x48 | 0x49 => {
                let state = if code == 0x48 {
                    STATE_POWER_ONLY
                } else {
                    STATE_ENABLED
                };
                for s in self.slots.iter_mut().filter(|s| s.present) {
                    s.state = state;
                }
            }
            _ => self.command_status = STATUS_INVALID_COMMAND,
        }
        self.serr_int |= COMMAND_DETECTED;
    }

    /// The capability's DWORD `at` (0 or 1) with `next` as its next pointer: id, next, DWORD
    /// select and pending (DWORD 0), the selected register (DWORD 1).
    pub fn cap_read(&self, at: usize, next: u8) -> u32 {
        match at {
            0 => {
                let pending = self.interrupt_pending() as u32;
                u32::from(CAP_ID)
                    | u32::from(next) << 8
                    | u32::from(self.select) << 16
                    | pending << 24
            }
            1 => self.read_dword(usize::from(self.select)),
            _ => 0,
        }
    }

    /// A guest write to the capability's DWORD `at`: the DWORD select (byte 2 of DWORD 0),
    /// or through DWORD 1 to the selected register.
    pub fn cap_write(&mut self, at: usize, within: usize, data: &[u8]) {
        match at {
            0 if within <= 2 && within + data.len() > 2 => self.select = data[2 - within],
            1 => {
                let offset = u64::from(self.select) * 4 + within as u64;
                self.write(offset, data);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
