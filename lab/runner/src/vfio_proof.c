/* kata-lab's VFIO proof (vfio_mode = "vfio"): drives QEMU's edu device (1234:11e8) from a
 * container through /dev/vfio: BAR0 mapped, the identification register read, 5! computed.
 * `vfio_proof irq`: the same through MSI: the device's MSI on with an eventfd
 * (VFIO_DEVICE_SET_IRQS), 5! started with edu's raise-interrupt bit (status 0x20 bit 0x80),
 * the eventfd waited for (poll, 5 s), the interrupt acknowledged (0x24 read, written to 0x64);
 * then one more through edu's raise register (0x60); prints the count.
 * `vfio_proof intx`: the same through INTx (VFIO masks the line at each interrupt: unmasked
 * after each acknowledgement). */
#include <dirent.h>
#include <poll.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
    printf("FAIL %s: %s\n", what, strerror(errno));
    return 1;
}

static int read_hex(const char *dir, const char *file, unsigned *out) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    int ok = fscanf(f, "%x", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

/* What an earlier user left in the edu (it has no reset, so it survives containers and VFIO
 * opens): an unacknowledged interrupt (its INTx level would fire at once when turned on) and
 * the raise-on-factorial bit (a plain 5! would leave an interrupt pending). */
static void edu_quiet(volatile uint32_t *bar) {
    bar[0x20 / 4] = 0;
    bar[0x64 / 4] = bar[0x24 / 4];
}

/* Waits up to 5 s for the MSI eventfd; returns the count read, 0 on a timeout. */
static uint64_t wait_irq(int efd) {
    struct pollfd p = {.fd = efd, .events = POLLIN};
    uint64_t n = 0;
    if (poll(&p, 1, 5000) != 1 || read(efd, &n, sizeof n) != sizeof n) return 0;
    return n;
}

/* The MSI proof (see the top). */
static int irq_proof(int dev, volatile uint32_t *bar, const char *group, const char *bdf) {
    struct vfio_irq_info ii = {.argsz = sizeof ii, .index = VFIO_PCI_MSI_IRQ_INDEX};
    if (ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii)) return fail("VFIO_DEVICE_GET_IRQ_INFO MSI");
    if (ii.count < 1) { printf("FAIL the device offers no MSI (VFIO MSI count 0)\n"); return 1; }
    /* Bus mastering: an MSI is a write by the device. */
    struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
    if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg)) return fail("config region info");
    uint16_t cmd = 0;
    if (pread(dev, &cmd, 2, cfg.offset + 4) != 2) return fail("reading the command register");
    cmd |= 0x6;
    if (pwrite(dev, &cmd, 2, cfg.offset + 4) != 2) return fail("writing the command register");
    edu_quiet(bar);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return fail("eventfd");
    struct { struct vfio_irq_set s; int32_t fd; } set = {
        .s = {.argsz = sizeof set, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
              .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 1},
        .fd = efd};
    if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &set)) return fail("VFIO_DEVICE_SET_IRQS (MSI on)");
    uint32_t ident = bar[0];
    bar[0x20 / 4] = 0x80;       /* raise an interrupt when the factorial is done */
    bar[0x08 / 4] = 5;
    uint64_t first = wait_irq(efd);
    uint32_t status = bar[0x24 / 4], fact = bar[0x08 / 4];
    bar[0x64 / 4] = status;     /* acknowledge */
    if (!first) {
        printf("FAIL no MSI within 5 s of the factorial (irq status 0x%x fact5=0x%x)\n", status, fact);
        return 1;
    }
    bar[0x60 / 4] = 0x100;      /* raise one more, by hand */
    uint64_t second = wait_irq(efd);
    uint32_t status2 = bar[0x24 / 4];
    bar[0x64 / 4] = status2;
    struct vfio_irq_set off = {.argsz = sizeof off, .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                               .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 0};
    if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &off)) return fail("VFIO_DEVICE_SET_IRQS (MSI off)");
    edu_quiet(bar);
    printf("group=%s device=%s id=0x%08x fact5=0x%x irq=msi vectors=%u status=0x%x raised=0x%x count=%llu\n",
           group, bdf, ident, fact, ii.count, status, status2,
           (unsigned long long)(first + second));
    return ident == 0x010000ed && fact == 0x78 && status == 1 && second && status2 == 0x100 ? 0 : 1;
}

/* VFIO_DEVICE_SET_IRQS of INTx with no data: `action` (unmask, or trigger off). */
static int intx_action(int dev, uint32_t action, uint32_t count) {
    struct vfio_irq_set s = {.argsz = sizeof s, .flags = VFIO_IRQ_SET_DATA_NONE | action,
                             .index = VFIO_PCI_INTX_IRQ_INDEX, .start = 0, .count = count};
    return ioctl(dev, VFIO_DEVICE_SET_IRQS, &s);
}

/* The INTx proof (see the top). */
static int intx_proof(int dev, volatile uint32_t *bar, const char *group, const char *bdf) {
    struct vfio_irq_info ii = {.argsz = sizeof ii, .index = VFIO_PCI_INTX_IRQ_INDEX};
    if (ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &ii)) return fail("VFIO_DEVICE_GET_IRQ_INFO INTx");
    if (ii.count < 1) { printf("FAIL the device offers no INTx (interrupt pin 0)\n"); return 1; }
    edu_quiet(bar);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return fail("eventfd");
    struct { struct vfio_irq_set s; int32_t fd; } set = {
        .s = {.argsz = sizeof set, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
              .index = VFIO_PCI_INTX_IRQ_INDEX, .start = 0, .count = 1},
        .fd = efd};
    if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &set)) return fail("VFIO_DEVICE_SET_IRQS (INTx on)");
    uint32_t ident = bar[0];
    bar[0x20 / 4] = 0x80;
    bar[0x08 / 4] = 5;
    uint64_t first = wait_irq(efd);
    uint32_t status = bar[0x24 / 4], fact = bar[0x08 / 4];
    bar[0x64 / 4] = status;
    if (!first) {
        printf("FAIL no INTx within 5 s of the factorial (irq status 0x%x fact5=0x%x)\n", status, fact);
        return 1;
    }
    if (intx_action(dev, VFIO_IRQ_SET_ACTION_UNMASK, 1)) return fail("VFIO_DEVICE_SET_IRQS (INTx unmask)");
    bar[0x60 / 4] = 0x100;
    uint64_t second = wait_irq(efd);
    uint32_t status2 = bar[0x24 / 4];
    bar[0x64 / 4] = status2;
    if (intx_action(dev, VFIO_IRQ_SET_ACTION_UNMASK, 1)) return fail("VFIO_DEVICE_SET_IRQS (INTx unmask)");
    if (intx_action(dev, VFIO_IRQ_SET_ACTION_TRIGGER, 0)) return fail("VFIO_DEVICE_SET_IRQS (INTx off)");
    edu_quiet(bar);
    /* The guest's IRQ of the function: the IOAPIC pin the MP table gave its swizzled pin; and
     * where it is (its sysfs device path: the bridges above it, so the guest PCI path). */
    char path[400], line[32] = "?", at[4096] = "?";
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s", bdf);
    if (!realpath(path, at)) snprintf(at, sizeof at, "?");
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/irq", bdf);
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(line, sizeof line, f)) snprintf(line, sizeof line, "?");
        fclose(f);
        line[strcspn(line, "\n")] = 0;
    }
    printf("group=%s device=%s id=0x%08x fact5=0x%x irq=intx status=0x%x raised=0x%x count=%llu line=%s sysfs=%s\n",
           group, bdf, ident, fact, status, status2, (unsigned long long)(first + second), line, at);
    return ident == 0x010000ed && fact == 0x78 && status == 1 && second && status2 == 0x100 ? 0 : 1;
}

int main(int argc, char **argv) {
    int irq = argc > 1 && !strcmp(argv[1], "irq");
    int intx = argc > 1 && !strcmp(argv[1], "intx");
    char bdf[300] = "", group[300] = "";
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char dir[300];
        unsigned v, id;
        snprintf(dir, sizeof dir, "/sys/bus/pci/devices/%s", e->d_name);
        if (!read_hex(dir, "vendor", &v) && !read_hex(dir, "device", &id) && v == 0x1234 && id == 0x11e8)
            snprintf(bdf, sizeof bdf, "%s", e->d_name);
    }
    if (!bdf[0]) { printf("FAIL no edu (1234:11e8) in /sys/bus/pci/devices\n"); return 1; }
    d = opendir("/dev/vfio");
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && strcmp(e->d_name, "vfio") && strcmp(e->d_name, "devices"))
            snprintf(group, sizeof group, "/dev/vfio/%s", e->d_name);
    if (!group[0]) { printf("FAIL no group node in /dev/vfio\n"); return 1; }
    int container = open("/dev/vfio/vfio", O_RDWR);
    if (container < 0) return fail("open /dev/vfio/vfio");
    if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) return fail("VFIO_GET_API_VERSION");
    int type = strstr(group, "noiommu-") ? VFIO_NOIOMMU_IOMMU : VFIO_TYPE1_IOMMU;
    int g = open(group, O_RDWR);
    if (g < 0) return fail(group);
    struct vfio_group_status st = {.argsz = sizeof st};
    if (ioctl(g, VFIO_GROUP_GET_STATUS, &st) || !(st.flags & VFIO_GROUP_FLAGS_VIABLE))
        return fail("VFIO_GROUP_GET_STATUS (viable)");
    if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &container)) return fail("VFIO_GROUP_SET_CONTAINER");
    if (ioctl(container, VFIO_SET_IOMMU, type)) return fail("VFIO_SET_IOMMU");
    int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (dev < 0) return fail("VFIO_GROUP_GET_DEVICE_FD");
    struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
    if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri)) return fail("VFIO_DEVICE_GET_REGION_INFO");
    if (!(ri.flags & VFIO_REGION_INFO_FLAG_MMAP)) { printf("FAIL BAR0 cannot be mapped\n"); return 1; }
    volatile uint32_t *bar = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, ri.offset);
    if (bar == MAP_FAILED) return fail("mmap BAR0");
    if (irq) return irq_proof(dev, bar, group, bdf);
    if (intx) return intx_proof(dev, bar, group, bdf);
    uint32_t ident = bar[0];
    edu_quiet(bar);
    bar[0x08 / 4] = 5;
    for (int i = 0; i < 5000 && (bar[0x20 / 4] & 1); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint32_t fact = bar[0x08 / 4];
    printf("group=%s device=%s bar0_size=0x%llx id=0x%08x fact5=0x%x\n", group, bdf,
           (unsigned long long)ri.size, ident, fact);
    return ident == 0x010000ed && fact == 0x78 ? 0 : 1;
}
