/*
 * The kernel side of the dma-buf oracle: runs every case of the case list
 * (crates/dmabuf-oracle/src/cases.rs) against the real kernel it boots in
 * and prints one line per case on stdout (the serial console):
 *
 *   @@C <id> <ret> <errno-name|0> <extra> #<fnv1a-32 of "<id> <ret> <errno> <extra>">
 *
 * <extra> is percent-escaped (space, '%', '#' and non-printable bytes), so
 * a line has exactly five space-separated fields; the checksum lets the
 * harness tell a line garbled by interleaved kernel output from a real one.
 * Framing: "@@BEGIN part=<p> release=<uname -r> version=<uname -v>" first,
 * "@@END part=<p> cases=<n>" last.
 *
 * Usage: probe abi | probe vfio <pci-bdf> <iommu-group> | probe kmod <pci-bdf> <iommu-group>
 * (kmod: the test importer module, kmod/dmabuf_test_importer.h, is loaded)
 * Built with musl-gcc -static; no kernel headers are used: every ioctl
 * number and struct layout is spelt out below from the uapi headers
 * (include/uapi/linux/dma-buf.h, sync_file.h, dma-heap.h, udmabuf.h,
 * vfio.h, drm/drm.h, drm/drm_mode.h, drm/vgem_drm.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include "dmabuf_test_importer.h"

/* ---- uapi ------------------------------------------------------------ */
#define DMA_BUF_IOCTL_SYNC 0x40086200u
#define DMA_BUF_IOCTL_SYNC_WRONG_SIZE 0x40046200u /* _IOW('b', 0, __u32) */
#define DMA_BUF_SET_NAME_A 0x40046201u
#define DMA_BUF_SET_NAME_B 0x40086201u
#define DMA_BUF_IOCTL_EXPORT_SYNC_FILE 0xc0086202u
#define DMA_BUF_IOCTL_IMPORT_SYNC_FILE 0x40086203u
#define SYNC_IOC_MERGE 0xc0303e03u
#define SYNC_IOC_FILE_INFO 0xc0383e04u
#define SYNC_IOC_SET_DEADLINE 0x40103e05u
#define SYNC_IOC_UNKNOWN 0x00003e09u /* _IO('>', 9) */
#define DMA_HEAP_IOCTL_ALLOC 0xc0184800u
#define UDMABUF_CREATE 0x40187542u
#define DRM_IOCTL_MODE_CREATE_DUMB 0xc02064b2u
#define DRM_IOCTL_PRIME_HANDLE_TO_FD 0xc00c642du
#define DRM_IOCTL_PRIME_FD_TO_HANDLE 0xc00c642eu
#define DRM_IOCTL_VGEM_FENCE_ATTACH 0xc0106441u
#define DRM_IOCTL_VGEM_FENCE_SIGNAL 0x40086442u
#define VFIO_GET_API_VERSION 0x3b64u
#define VFIO_SET_IOMMU 0x3b66u
#define VFIO_GROUP_GET_STATUS 0x3b67u
#define VFIO_GROUP_SET_CONTAINER 0x3b68u
#define VFIO_GROUP_GET_DEVICE_FD 0x3b6au
#define VFIO_DEVICE_RESET 0x3b6fu
#define VFIO_DEVICE_GET_REGION_INFO 0x3b6cu
#define VFIO_PCI_CONFIG_REGION_INDEX 7
#define VFIO_DEVICE_FEATURE 0x3b75u
#define VFIO_TYPE1v2_IOMMU 3
#define FEAT_GET (1u << 16)
#define FEAT_SET (1u << 17)
#define FEAT_PROBE (1u << 18)
#define FEAT_DMA_BUF 11u

struct sync_merge_data { char name[32]; int32_t fd2; int32_t fence; uint32_t flags; uint32_t pad; };
struct sync_fence_info { char obj_name[32]; char driver_name[32]; int32_t status; uint32_t flags; uint64_t timestamp_ns; };
struct sync_file_info { char name[32]; int32_t status; uint32_t flags; uint32_t num_fences; uint32_t pad; uint64_t sync_fence_info; };
struct sync_set_deadline { uint64_t deadline_ns; uint64_t pad; };
struct dma_buf_export_sync_file { uint32_t flags; int32_t fd; };
struct dma_buf_import_sync_file { uint32_t flags; int32_t fd; };
struct dma_heap_allocation_data { uint64_t len; uint32_t fd; uint32_t fd_flags; uint64_t heap_flags; };
struct udmabuf_create { uint32_t memfd; uint32_t flags; uint64_t offset; uint64_t size; };
struct drm_mode_create_dumb { uint32_t height, width, bpp, flags, handle, pitch; uint64_t size; };
struct drm_prime_handle { uint32_t handle; uint32_t flags; int32_t fd; };
struct drm_vgem_fence_attach { uint32_t handle; uint32_t flags; uint32_t out_fence; uint32_t pad; };
struct drm_vgem_fence_signal { uint32_t fence; uint32_t flags; };

#define BUF_SIZE 16384
#define PAGE 4096

/* ---- output ---------------------------------------------------------- */
static int ncases;

static const char *ename(int e)
{
	static char buf[16];
	switch (e) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case EMFILE: return "EMFILE";
	case ENOTTY: return "ENOTTY";
	case ESPIPE: return "ESPIPE";
	case ENOSYS: return "ENOSYS";
	case EOVERFLOW: return "EOVERFLOW";
	case EBADFD: return "EBADFD";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ENXIO: return "ENXIO";
	case ENOTCONN: return "ENOTCONN";
	}
	snprintf(buf, sizeof buf, "E%d", e);
	return buf;
}

static uint32_t fnv(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static void emit(const char *id, long long ret, int err, const char *extra)
{
	char esc[2048], line[2300];
	size_t o = 0;
	if (!extra || !*extra)
		extra = "-";
	for (const unsigned char *p = (const unsigned char *)extra; *p && o + 4 < sizeof esc; p++) {
		if (*p <= 0x20 || *p >= 0x7f || *p == '%' || *p == '#')
			o += sprintf(esc + o, "%%%02X", *p);
		else
			esc[o++] = (char)*p;
	}
	esc[o] = 0;
	snprintf(line, sizeof line, "%s %lld %s %s", id, ret, ename(err), esc);
	printf("@@C %s #%08x\n", line, fnv(line));
	fflush(stdout);
	ncases++;
}

/* Run a call, record ret and errno. */
#define CALL(expr) ({ errno = 0; long long _r = (long long)(expr); _e = (_r < 0) ? errno : 0; _r; })
static int _e;
#define EMIT(id, expr, extra) do { long long _r = CALL(expr); emit(id, _r, _e, extra); } while (0)

/* ---- helpers --------------------------------------------------------- */
static int heap_fd = -1;

static int heap_alloc_full(uint64_t len, uint32_t fd_flags, uint64_t heap_flags, uint32_t in_fd, int *err)
{
	struct dma_heap_allocation_data d = { .len = len, .fd = in_fd, .fd_flags = fd_flags, .heap_flags = heap_flags };
	errno = 0;
	int r = ioctl(heap_fd, DMA_HEAP_IOCTL_ALLOC, &d);
	*err = r < 0 ? errno : 0;
	return r < 0 ? r : (int)d.fd;
}

static int heap_alloc(uint32_t fd_flags)
{
	int e;
	return heap_alloc_full(BUF_SIZE, fd_flags, 0, 0, &e);
}

/* fdinfo of fd as "k=v,..." for the given keys (missing keys: k=<none>). */
static void fdinfo(int fd, const char *const *keys, char *out, size_t n)
{
	char path[64], text[4096];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY);
	ssize_t len = f < 0 ? -1 : read(f, text, sizeof text - 1);
	if (f >= 0)
		close(f);
	if (len < 0) {
		snprintf(out, n, "fdinfo=%s", ename(errno));
		return;
	}
	text[len] = 0;
	out[0] = 0;
	size_t o = 0;
	for (int k = 0; keys[k]; k++) {
		char want[64];
		snprintf(want, sizeof want, "%s:\t", keys[k]);
		const char *val = NULL;
		for (char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
			if (!strncmp(l, want, strlen(want))) {
				val = l + strlen(want);
				break;
			}
		o += snprintf(out + o, n - o, "%s%s=", k ? "," : "", keys[k]);
		if (!val)
			o += snprintf(out + o, n - o, "<none>");
		else
			while (*val && *val != '\n' && o + 1 < n)
				out[o++] = *val++, out[o] = 0;
	}
}

/* The fdinfo keys in order of appearance. */
static void fdinfo_keys(int fd, char *out, size_t n)
{
	char path[64], text[4096];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY);
	ssize_t len = f < 0 ? -1 : read(f, text, sizeof text - 1);
	if (f >= 0)
		close(f);
	out[0] = 0;
	if (len < 0)
		return;
	text[len] = 0;
	size_t o = 0;
	for (char *l = text; *l;) {
		char *c = strchr(l, ':'), *nl = strchr(l, '\n');
		if (!c || (nl && c > nl))
			break;
		o += snprintf(out + o, n - o, "%s%.*s", o ? "," : "", (int)(c - l), l);
		if (!nl)
			break;
		l = nl + 1;
	}
}

/* readlink("/proc/self/fd/N") */
static void fdlink(int fd, char *out, size_t n)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t l = readlink(path, out, n - 1);
	if (l < 0)
		snprintf(out, n, "readlink=%s", ename(errno));
	else
		out[l] = 0;
}

static const char *const FD_KEYS[] = { "pos", "flags", "size", "count", "exp_name", "name", NULL };

/* "name=..,n=..,status=..,f0=drv/tl/status/ts?,.." via SYNC_IOC_FILE_INFO */
static void describe_sync(int sfd, char *out, size_t n)
{
	struct sync_file_info info = { 0 };
	struct sync_fence_info fi[8];
	if (ioctl(sfd, SYNC_IOC_FILE_INFO, &info) < 0) {
		snprintf(out, n, "info=%s", ename(errno));
		return;
	}
	uint32_t count = info.num_fences;
	if (count > 8)
		count = 8;
	memset(fi, 0, sizeof fi);
	struct sync_file_info info2 = { .num_fences = count, .sync_fence_info = (uint64_t)(uintptr_t)fi };
	if (count && ioctl(sfd, SYNC_IOC_FILE_INFO, &info2) < 0) {
		snprintf(out, n, "info2=%s", ename(errno));
		return;
	}
	size_t o = snprintf(out, n, "name=%s,status=%d,n=%u", info.name, info.status, info.num_fences);
	for (uint32_t i = 0; i < count && o < n; i++)
		o += snprintf(out + o, n - o, ",f%u=%s/%s/%d/%s", i, fi[i].driver_name, fi[i].obj_name,
			      fi[i].status, fi[i].timestamp_ns ? "ts" : "nots");
}

static int export_sync(int buf, uint32_t flags)
{
	struct dma_buf_export_sync_file a = { .flags = flags, .fd = -1 };
	if (ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &a) < 0)
		return -1;
	return a.fd;
}

static int import_sync(int buf, uint32_t flags, int sfd)
{
	struct dma_buf_import_sync_file a = { .flags = flags, .fd = sfd };
	return ioctl(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &a);
}

static const char *pollbits(int fd, short events, char *out, size_t n)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r = poll(&p, 1, 0);
	if (r < 0)
		snprintf(out, n, "poll=%s", ename(errno));
	else
		snprintf(out, n, "rev=%s%s%s%s", p.revents & POLLIN ? "IN" : "", p.revents & POLLOUT ? "OUT" : "",
			 p.revents & POLLPRI ? "PRI" : "", p.revents & POLLERR ? "ERR" : "");
	return out;
}

/* vgem: an unsignalled fence as a sync_file. */
static int vgem_fd = -1;
struct unsig { int sync; uint32_t fence; int prime; };

static int vgem_unsig(struct unsig *u)
{
	struct drm_mode_create_dumb c = { .height = 1, .width = 1024, .bpp = 32 };
	if (ioctl(vgem_fd, DRM_IOCTL_MODE_CREATE_DUMB, &c) < 0)
		return -1;
	struct drm_vgem_fence_attach a = { .handle = c.handle, .flags = 1 /* VGEM_FENCE_WRITE */ };
	if (ioctl(vgem_fd, DRM_IOCTL_VGEM_FENCE_ATTACH, &a) < 0)
		return -1;
	struct drm_prime_handle p = { .handle = c.handle, .flags = O_CLOEXEC | O_RDWR, .fd = -1 };
	if (ioctl(vgem_fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &p) < 0)
		return -1;
	u->fence = a.out_fence;
	u->prime = p.fd;
	u->sync = export_sync(p.fd, 3);
	return u->sync;
}

static int vgem_signal(uint32_t fence)
{
	struct drm_vgem_fence_signal s = { .fence = fence };
	return ioctl(vgem_fd, DRM_IOCTL_VGEM_FENCE_SIGNAL, &s);
}

static uint32_t late_fence;
static void *late_signal(void *arg)
{
	(void)arg;
	usleep(400000);
	vgem_signal(late_fence);
	return NULL;
}

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

/* ---- the ABI part ---------------------------------------------------- */
static void case_sync(void)
{
	static const struct { const char *id; uint64_t flags; } F[] = {
		{ "sync.flags_1", 1 }, { "sync.flags_2", 2 }, { "sync.flags_3", 3 }, { "sync.flags_5", 5 },
		{ "sync.flags_6", 6 }, { "sync.flags_7", 7 }, { "sync.flags_0", 0 }, { "sync.flags_4", 4 },
		{ "sync.flags_8", 8 }, { "sync.flags_9", 9 }, { "sync.read_bit32", 1 | (1ull << 32) },
		{ "sync.read_bit63", 1 | (1ull << 63) }, { "sync.flags_all", ~0ull }, { "sync.flags_0x17", 0x17 },
	};
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	{
		/* END with no START on a fresh buffer */
		int b2 = heap_alloc(O_RDWR | O_CLOEXEC);
		uint64_t f = 6;
		EMIT("sync.end_without_start", ioctl(b2, DMA_BUF_IOCTL_SYNC, &f), NULL);
		close(b2);
	}
	for (size_t i = 0; i < sizeof F / sizeof F[0]; i++) {
		uint64_t f = F[i].flags;
		EMIT(F[i].id, ioctl(b, DMA_BUF_IOCTL_SYNC, &f), NULL);
	}
	EMIT("sync.null", ioctl(b, DMA_BUF_IOCTL_SYNC, NULL), NULL);
	uint64_t f = 1;
	EMIT("sync.wrong_size", ioctl(b, DMA_BUF_IOCTL_SYNC_WRONG_SIZE, &f), NULL);
	close(b);
}

static void case_name(void)
{
	char x[512];
	const char *n31 = "abcdefghijklmnopqrstuvwxyz01234";
	const char *n32 = "abcdefghijklmnopqrstuvwxyz012345";
	static const char *const K[] = { "name", NULL };
	for (int ab = 0; ab < 2; ab++) {
		unsigned cmd = ab ? DMA_BUF_SET_NAME_B : DMA_BUF_SET_NAME_A;
		char id[64];
		int b = heap_alloc(O_RDWR | O_CLOEXEC);
		fdinfo(b, K, x, sizeof x);
		snprintf(id, sizeof id, "name.%c.before", ab ? 'b' : 'a');
		emit(id, 0, 0, x);
		long long r = CALL(ioctl(b, cmd, n31));
		fdinfo(b, K, x, sizeof x);
		snprintf(id, sizeof id, "name.%c.len31", ab ? 'b' : 'a');
		emit(id, r, _e, x);
		r = CALL(ioctl(b, cmd, n32));
		fdinfo(b, K, x, sizeof x);
		snprintf(id, sizeof id, "name.%c.len32_keeps_old", ab ? 'b' : 'a');
		emit(id, r, _e, x);
		r = CALL(ioctl(b, cmd, ""));
		fdinfo(b, K, x, sizeof x);
		snprintf(id, sizeof id, "name.%c.empty", ab ? 'b' : 'a');
		emit(id, r, _e, x);
		r = CALL(ioctl(b, cmd, (void *)8));
		snprintf(id, sizeof id, "name.%c.bad_pointer", ab ? 'b' : 'a');
		emit(id, r, _e, NULL);
		r = CALL(ioctl(b, cmd, NULL));
		snprintf(id, sizeof id, "name.%c.null", ab ? 'b' : 'a');
		emit(id, r, _e, NULL);
		close(b);
	}
	{
		int b = heap_alloc(O_RDWR | O_CLOEXEC);
		fdlink(b, x, sizeof x);
		emit("name.link_unnamed", 0, 0, x);
		ioctl(b, DMA_BUF_SET_NAME_B, "abc");
		fdlink(b, x, sizeof x);
		emit("name.link_named", 0, 0, x);
		ioctl(b, DMA_BUF_SET_NAME_B, "");
		fdlink(b, x, sizeof x);
		emit("name.link_empty_name", 0, 0, x);
		close(b);
	}
	int b = heap_alloc(O_RDONLY | O_CLOEXEC);
	long long r = CALL(ioctl(b, DMA_BUF_SET_NAME_B, "ro"));
	fdinfo(b, K, x, sizeof x);
	emit("name.readonly_fd", r, _e, x);
	r = CALL(ioctl(b, DMA_BUF_SET_NAME_B, "\xff\xfe"));
	fdinfo(b, K, x, sizeof x);
	emit("name.non_utf8", r, _e, x);
	r = CALL(ioctl(b, DMA_BUF_SET_NAME_B, "a b\tc"));
	fdinfo(b, K, x, sizeof x);
	emit("name.whitespace", r, _e, x);
	close(b);
}

static void case_fdinfo(void)
{
	char x[512];
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	fdinfo(b, FD_KEYS, x, sizeof x);
	emit("fdinfo.system_rw", 0, 0, x);
	fdinfo_keys(b, x, sizeof x);
	emit("fdinfo.keys", 0, 0, x);
	int d = dup(b);
	fdinfo(b, FD_KEYS, x, sizeof x);
	emit("fdinfo.count_after_dup", 0, 0, x);
	close(d);
	close(b);
	b = heap_alloc(O_RDONLY | O_CLOEXEC);
	fdinfo(b, FD_KEYS, x, sizeof x);
	emit("fdinfo.system_ro", 0, 0, x);
	close(b);
	b = heap_alloc(O_WRONLY);
	fdinfo(b, FD_KEYS, x, sizeof x);
	emit("fdinfo.system_wo_nocloexec", 0, 0, x);
	close(b);
}

static void case_heap(void)
{
	char x[512];
	int e;
	int fd = heap_alloc_full(1, O_RDWR | O_CLOEXEC, 0, 0, &e);
	if (fd >= 0) {
		fdinfo(fd, FD_KEYS, x, sizeof x);
		close(fd);
	} else
		x[0] = 0;
	emit("heap.len_1", fd < 0 ? -1 : 0, e, x);
	fd = heap_alloc_full(0, O_RDWR, 0, 0, &e);
	emit("heap.len_0", fd < 0 ? -1 : 0, e, NULL);
	if (fd >= 0) close(fd);
	fd = heap_alloc_full(BUF_SIZE, O_RDWR, 1, 0, &e);
	emit("heap.heap_flags_1", fd < 0 ? -1 : 0, e, NULL);
	if (fd >= 0) close(fd);
	fd = heap_alloc_full(BUF_SIZE, O_RDWR | O_NONBLOCK, 0, 0, &e);
	emit("heap.fd_flags_nonblock", fd < 0 ? -1 : 0, e, NULL);
	if (fd >= 0) close(fd);
	fd = heap_alloc_full(BUF_SIZE, O_RDWR | O_APPEND, 0, 0, &e);
	emit("heap.fd_flags_append", fd < 0 ? -1 : 0, e, NULL);
	if (fd >= 0) close(fd);
	fd = heap_alloc_full(5000, O_RDWR, 0, 0, &e);
	if (fd >= 0) {
		fdinfo(fd, (const char *const[]){ "size", NULL }, x, sizeof x);
		close(fd);
	} else
		x[0] = 0;
	emit("heap.len_5000_rounds_up", fd < 0 ? -1 : 0, e, x);
}

static void case_seek_rw(void)
{
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	char c[16];
	EMIT("seek.end_0", lseek(b, 0, SEEK_END), NULL);
	EMIT("seek.set_0", lseek(b, 0, SEEK_SET), NULL);
	EMIT("seek.cur_0", lseek(b, 0, SEEK_CUR), NULL);
	EMIT("seek.set_1", lseek(b, 1, SEEK_SET), NULL);
	EMIT("seek.end_1", lseek(b, 1, SEEK_END), NULL);
	EMIT("seek.end_minus_1", lseek(b, -1, SEEK_END), NULL);
	EMIT("rw.read", read(b, c, sizeof c), NULL);
	EMIT("rw.write", write(b, c, sizeof c), NULL);
	EMIT("rw.pread", pread(b, c, sizeof c, 0), NULL);
	EMIT("rw.pwrite", pwrite(b, c, sizeof c, 0), NULL);
	close(b);
}

static void case_poll(void)
{
	char x[64];
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	emit("poll.idle_in", 0, 0, pollbits(b, POLLIN, x, sizeof x));
	emit("poll.idle_out", 0, 0, pollbits(b, POLLOUT, x, sizeof x));
	emit("poll.idle_inout", 0, 0, pollbits(b, POLLIN | POLLOUT, x, sizeof x));
	emit("poll.idle_pri", 0, 0, pollbits(b, POLLPRI, x, sizeof x));
	close(b);
}

static void case_mmap(void)
{
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	void *p;
#define MM(id, prot, flags, len, off) do { \
		p = mmap(NULL, len, prot, flags, b, off); \
		int _er = p == MAP_FAILED ? errno : 0; \
		emit(id, p == MAP_FAILED ? -1 : 0, _er, NULL); \
		if (p != MAP_FAILED) munmap(p, len); \
	} while (0)
	MM("mmap.shared_rw", PROT_READ | PROT_WRITE, MAP_SHARED, BUF_SIZE, 0);
	MM("mmap.shared_ro", PROT_READ, MAP_SHARED, BUF_SIZE, 0);
	MM("mmap.private", PROT_READ | PROT_WRITE, MAP_PRIVATE, BUF_SIZE, 0);
	MM("mmap.offset_1_page", PROT_READ | PROT_WRITE, MAP_SHARED, BUF_SIZE - PAGE, PAGE);
	MM("mmap.past_end", PROT_READ, MAP_SHARED, PAGE, BUF_SIZE);
	MM("mmap.too_long", PROT_READ, MAP_SHARED, BUF_SIZE + PAGE, 0);
	MM("mmap.prot_exec", PROT_READ | PROT_EXEC, MAP_SHARED, BUF_SIZE, 0);
	close(b);
	b = heap_alloc(O_RDONLY | O_CLOEXEC);
	MM("mmap.ro_fd_write", PROT_READ | PROT_WRITE, MAP_SHARED, BUF_SIZE, 0);
	MM("mmap.ro_fd_read", PROT_READ, MAP_SHARED, BUF_SIZE, 0);
	close(b);
}

static void case_export_import(void)
{
	char x[512];
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	static const struct { const char *id; uint32_t flags; } E[] = {
		{ "export.flags_1", 1 }, { "export.flags_2", 2 }, { "export.flags_3", 3 }, { "export.flags_0", 0 },
		{ "export.flags_4", 4 }, { "export.flags_5", 5 }, { "export.flags_0x80000001", 0x80000001u },
	};
	for (size_t i = 0; i < sizeof E / sizeof E[0]; i++) {
		int s = CALL(export_sync(b, E[i].flags));
		int e = _e;
		x[0] = 0;
		if (s >= 0) {
			describe_sync(s, x, sizeof x);
			close(s);
		}
		emit(E[i].id, s < 0 ? -1 : 0, e, x);
	}
	{
		struct dma_buf_export_sync_file a = { .flags = 1, .fd = 12345 };
		long long r = CALL(ioctl(b, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &a));
		emit("export.input_fd_ignored", r, _e, a.fd >= 0 && a.fd != 12345 ? "fd=new" : "fd=kept");
		if (r == 0) close(a.fd);
	}
	EMIT("export.null", ioctl(b, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, NULL), NULL);

	int sig = export_sync(b, 1);
	static const struct { const char *id; uint32_t flags; } I[] = {
		{ "import.flags_1", 1 }, { "import.flags_2", 2 }, { "import.flags_3", 3 }, { "import.flags_0", 0 },
		{ "import.flags_4", 4 }, { "import.flags_9", 9 }, { "import.flags_0x80000001", 0x80000001u },
	};
	for (size_t i = 0; i < sizeof I / sizeof I[0]; i++)
		EMIT(I[i].id, import_sync(b, I[i].flags, sig), NULL);
	EMIT("import.fd_minus_1", import_sync(b, 1, -1), NULL);
	int closed = dup(sig);
	close(closed);
	EMIT("import.fd_closed", import_sync(b, 1, closed), NULL);
	int dn = open("/dev/null", O_RDWR);
	EMIT("import.fd_devnull", import_sync(b, 1, dn), NULL);
	close(dn);
	int b2 = heap_alloc(O_RDWR);
	EMIT("import.fd_dmabuf", import_sync(b, 1, b2), NULL);
	close(b2);
	EMIT("import.null", ioctl(b, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, NULL), NULL);
	/* after importing signalled fences the buffer is still idle */
	emit("import.signalled_poll", 0, 0, pollbits(b, POLLIN | POLLOUT, x, sizeof x));
	close(sig);
	close(b);
}

static void case_unsignalled(void)
{
	char x[512], y[64];
	for (int w = 0; w < 2; w++) {
		struct unsig u;
		const char *dir = w ? "write" : "read";
		char id[64];
		int b = heap_alloc(O_RDWR | O_CLOEXEC);
		if (vgem_unsig(&u) < 0) {
			snprintf(id, sizeof id, "unsig.%s.import", dir);
			emit(id, -1, errno, "vgem-setup-failed");
			continue;
		}
		long long r = CALL(import_sync(b, w ? 2 : 1, u.sync));
		snprintf(id, sizeof id, "unsig.%s.import", dir);
		emit(id, r, _e, NULL);
		snprintf(id, sizeof id, "unsig.%s.poll", dir);
		emit(id, 0, 0, pollbits(b, POLLIN | POLLOUT, y, sizeof y));
		for (uint32_t f = 1; f <= 3; f++) {
			int s = CALL(export_sync(b, f));
			int e = _e;
			x[0] = 0;
			if (s >= 0) {
				describe_sync(s, x, sizeof x);
				close(s);
			}
			snprintf(id, sizeof id, "unsig.%s.export_%u", dir, f);
			emit(id, s < 0 ? -1 : 0, e, x);
		}
		snprintf(id, sizeof id, "unsig.%s.sync_file_poll", dir);
		emit(id, 0, 0, pollbits(u.sync, POLLIN, y, sizeof y));
		/* SYNC START|RW blocks until the fence signals (signalled 400 ms later) */
		late_fence = u.fence;
		pthread_t t;
		pthread_create(&t, NULL, late_signal, NULL);
		long long t0 = now_ms();
		uint64_t fl = 3;
		r = CALL(ioctl(b, DMA_BUF_IOCTL_SYNC, &fl));
		long long dt = now_ms() - t0;
		pthread_join(t, NULL);
		snprintf(id, sizeof id, "unsig.%s.sync_blocks", dir);
		emit(id, r, _e, dt >= 300 ? "blocked" : "returned-at-once");
		snprintf(id, sizeof id, "unsig.%s.poll_after_signal", dir);
		emit(id, 0, 0, pollbits(b, POLLIN | POLLOUT, y, sizeof y));
		snprintf(id, sizeof id, "unsig.%s.sync_file_poll_after_signal", dir);
		emit(id, 0, 0, pollbits(u.sync, POLLIN, y, sizeof y));
		describe_sync(u.sync, x, sizeof x);
		snprintf(id, sizeof id, "unsig.%s.info_after_signal", dir);
		emit(id, 0, 0, x);
		close(u.sync);
		close(u.prime);
		close(b);
	}
}

static void case_sync_file(void)
{
	char x[512], y[64];
	struct unsig u1, u2;
	if (vgem_unsig(&u1) < 0 || vgem_unsig(&u2) < 0) {
		emit("syncfile.setup", -1, errno, "vgem-setup-failed");
		return;
	}
	describe_sync(u1.sync, x, sizeof x);
	emit("syncfile.unsignalled_info", 0, 0, x);
	emit("syncfile.unsignalled_poll", 0, 0, pollbits(u1.sync, POLLIN, y, sizeof y));
	fdinfo(u1.sync, (const char *const[]){ "pos", "flags", NULL }, x, sizeof x);
	emit("syncfile.fdinfo", 0, 0, x);
	fdlink(u1.sync, x, sizeof x);
	emit("syncfile.link", 0, 0, x);
	char c[8];
	EMIT("syncfile.lseek", lseek(u1.sync, 0, SEEK_SET), NULL);
	EMIT("syncfile.read", read(u1.sync, c, sizeof c), NULL);
	void *p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, u1.sync, 0);
	emit("syncfile.mmap", p == MAP_FAILED ? -1 : 0, p == MAP_FAILED ? errno : 0, NULL);
	EMIT("syncfile.unknown_ioctl", ioctl(u1.sync, SYNC_IOC_UNKNOWN, 0), NULL);
	EMIT("syncfile.dmabuf_ioctl_on_sync_file", ioctl(u1.sync, DMA_BUF_IOCTL_SYNC, &(uint64_t){ 1 }), NULL);

	/* SYNC_IOC_MERGE */
	struct sync_merge_data m;
#define MERGE(id, a, setup) do { \
		memset(&m, 0, sizeof m); \
		strcpy(m.name, "merged"); \
		m.fence = -77; \
		setup; \
		long long _r = CALL(ioctl(a, SYNC_IOC_MERGE, &m)); \
		int _er = _e; \
		x[0] = 0; \
		if (_r == 0) { describe_sync(m.fence, x, sizeof x); close(m.fence); } \
		else snprintf(x, sizeof x, "fence=%d", m.fence); \
		emit(id, _r, _er, x); \
	} while (0)
	MERGE("merge.same_fd_twice", u1.sync, m.fd2 = u1.sync);
	MERGE("merge.two_timelines", u1.sync, m.fd2 = u2.sync);
	MERGE("merge.bad_fd2", u1.sync, m.fd2 = -1);
	int b = heap_alloc(O_RDWR | O_CLOEXEC);
	MERGE("merge.fd2_dmabuf", u1.sync, m.fd2 = b);
	MERGE("merge.first_is_dmabuf", b, m.fd2 = u1.sync);
	MERGE("merge.flags_nonzero", u1.sync, (m.fd2 = u2.sync, m.flags = 1));
	MERGE("merge.pad_nonzero", u1.sync, (m.fd2 = u2.sync, m.pad = 1));
	MERGE("merge.name_32_no_nul", u1.sync, (m.fd2 = u2.sync, memcpy(m.name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", 32)));
	MERGE("merge.empty_name", u1.sync, (m.fd2 = u2.sync, m.name[0] = 0));
	EMIT("merge.null", ioctl(u1.sync, SYNC_IOC_MERGE, NULL), NULL);
	int s1 = export_sync(b, 1), s2 = export_sync(b, 2);
	MERGE("merge.two_signalled", s1, m.fd2 = s2);

	/* SYNC_IOC_FILE_INFO on a merged, two-fence file */
	memset(&m, 0, sizeof m);
	strcpy(m.name, "two");
	m.fd2 = u2.sync;
	ioctl(u1.sync, SYNC_IOC_MERGE, &m);
	int two = m.fence;
	struct sync_fence_info fi[4];
	struct sync_file_info in;
#define INFO(id, fd, setup, extra_fmt) do { \
		memset(&in, 0, sizeof in); \
		memset(fi, 0xa5, sizeof fi); \
		setup; \
		long long _r = CALL(ioctl(fd, SYNC_IOC_FILE_INFO, &in)); \
		int _er = _e; \
		snprintf(x, sizeof x, "name=%s,status=%d,num=%u,touched=%s", in.name, in.status, in.num_fences, \
			 ((unsigned char *)fi)[0] == 0xa5 ? "no" : "yes"); \
		emit(id, _r, _er, x); \
	} while (0)
	INFO("info.count_only", two, (void)0, 0);
	INFO("info.count_only_with_pointer", two, in.sync_fence_info = (uintptr_t)fi, 0);
	INFO("info.exact", two, (in.num_fences = 2, in.sync_fence_info = (uintptr_t)fi), 0);
	INFO("info.larger", two, (in.num_fences = 4, in.sync_fence_info = (uintptr_t)fi), 0);
	INFO("info.too_small", two, (in.num_fences = 1, in.sync_fence_info = (uintptr_t)fi), 0);
	INFO("info.null_array", two, (in.num_fences = 2), 0);
	INFO("info.bad_array", two, (in.num_fences = 2, in.sync_fence_info = 8), 0);
	INFO("info.flags_nonzero", two, in.flags = 1, 0);
	INFO("info.pad_nonzero", two, in.pad = 1, 0);
	EMIT("info.null", ioctl(two, SYNC_IOC_FILE_INFO, NULL), NULL);
	{
		memset(&in, 0, sizeof in);
		memset(fi, 0, sizeof fi);
		in.num_fences = 2;
		in.sync_fence_info = (uintptr_t)fi;
		long long r = CALL(ioctl(two, SYNC_IOC_FILE_INFO, &in));
		snprintf(x, sizeof x, "s0=%d,s1=%d,ts0=%s,flags0=%u", fi[0].status, fi[1].status,
			 fi[0].timestamp_ns ? "set" : "0", fi[0].flags);
		emit("info.unsignalled_fields", r, _e, x);
	}

	/* SYNC_IOC_SET_DEADLINE */
	struct sync_set_deadline d = { .deadline_ns = 1000 };
	EMIT("deadline.ok", ioctl(u1.sync, SYNC_IOC_SET_DEADLINE, &d), NULL);
	d.pad = 1;
	EMIT("deadline.pad_nonzero", ioctl(u1.sync, SYNC_IOC_SET_DEADLINE, &d), NULL);
	EMIT("deadline.null", ioctl(u1.sync, SYNC_IOC_SET_DEADLINE, NULL), NULL);
	d.pad = 0;
	EMIT("deadline.signalled", ioctl(s1, SYNC_IOC_SET_DEADLINE, &d), NULL);

	/* signal one of the two and look again */
	vgem_signal(u1.fence);
	describe_sync(two, x, sizeof x);
	emit("info.half_signalled", 0, 0, x);
	emit("syncfile.half_signalled_poll", 0, 0, pollbits(two, POLLIN, y, sizeof y));
	vgem_signal(u2.fence);
	describe_sync(two, x, sizeof x);
	emit("info.all_signalled", 0, 0, x);
	emit("syncfile.signalled_poll", 0, 0, pollbits(two, POLLIN, y, sizeof y));
		close(two);
	close(s1);
	close(s2);
	close(b);
	close(u1.sync);
	close(u2.sync);
	close(u1.prime);
	close(u2.prime);
}

static void case_exporters(void)
{
	char x[512];
	/* udmabuf */
	int ud = open("/dev/udmabuf", O_RDWR);
	int mfd = syscall(SYS_memfd_create, "oracle", 2 /* MFD_ALLOW_SEALING */);
	ftruncate(mfd, BUF_SIZE);
	fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK);
	struct udmabuf_create c = { .memfd = mfd, .size = BUF_SIZE };
	int u = CALL(ioctl(ud, UDMABUF_CREATE, &c));
	int e = _e;
	x[0] = 0;
	if (u >= 0)
		fdinfo(u, FD_KEYS, x, sizeof x);
	if (u < 0)
		emit("exporter.udmabuf.create", -1, e, NULL);
	/* vgem */
	struct drm_mode_create_dumb cd = { .height = 1, .width = 4096, .bpp = 32 };
	int vr = CALL(ioctl(vgem_fd, DRM_IOCTL_MODE_CREATE_DUMB, &cd));
	struct drm_prime_handle ph = { .handle = cd.handle, .flags = O_CLOEXEC | O_RDWR, .fd = -1 };
	if (vr == 0)
		vr = CALL(ioctl(vgem_fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	e = _e;
	x[0] = 0;
	if (vr == 0)
		fdinfo(ph.fd, FD_KEYS, x, sizeof x);
	if (vr < 0)
		emit("exporter.vgem.create", -1, e, NULL);
	int bufs[2] = { u, vr == 0 ? ph.fd : -1 };
	const char *names[2] = { "udmabuf", "vgem" };
	for (int i = 0; i < 2; i++) {
		char id[64], y[64];
		int b = bufs[i];
		uint64_t fl = 3;
		snprintf(id, sizeof id, "exporter.%s.sync_rw", names[i]);
		EMIT(id, ioctl(b, DMA_BUF_IOCTL_SYNC, &fl), NULL);
		snprintf(id, sizeof id, "exporter.%s.seek_end", names[i]);
		EMIT(id, lseek(b, 0, SEEK_END), NULL);
		snprintf(id, sizeof id, "exporter.%s.poll", names[i]);
		emit(id, 0, 0, pollbits(b, POLLIN | POLLOUT, y, sizeof y));
		snprintf(id, sizeof id, "exporter.%s.set_name", names[i]);
		long long r = CALL(ioctl(b, DMA_BUF_SET_NAME_B, "n"));
		fdinfo(b, (const char *const[]){ "name", NULL }, x, sizeof x);
		emit(id, r, _e, x);
		snprintf(id, sizeof id, "exporter.%s.export_sync_file", names[i]);
		int s = CALL(export_sync(b, 3));
		e = _e;
		x[0] = 0;
		if (s >= 0) {
			describe_sync(s, x, sizeof x);
			close(s);
		}
		emit(id, s < 0 ? -1 : 0, e, x);
		close(b);
	}
	close(mfd);
	close(ud);
}

/* ---- the VFIO part --------------------------------------------------- */
struct vfio_region_info { uint32_t argsz, flags, index, cap_offset; uint64_t size, offset; };

/* PCI_COMMAND (config offset 4) memory-space bit through the config region. */
static int set_memory(int dev, int on)
{
	struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0)
		return -1;
	uint16_t cmd;
	if (pread(dev, &cmd, 2, ri.offset + 4) != 2)
		return -1;
	cmd = on ? (cmd | 2) : (cmd & ~2);
	return pwrite(dev, &cmd, 2, ri.offset + 4) == 2 ? 0 : -1;
}

static void buf_abi(const char *phase, int b)
{
	char id[96], x[512], y[64];
	uint64_t fl = 3;
	snprintf(id, sizeof id, "vfio.%s.sync", phase);
	EMIT(id, ioctl(b, DMA_BUF_IOCTL_SYNC, &fl), NULL);
	snprintf(id, sizeof id, "vfio.%s.export_sync_file", phase);
	int s = CALL(export_sync(b, 3));
	int e = _e;
	x[0] = 0;
	if (s >= 0) {
		describe_sync(s, x, sizeof x);
		close(s);
	}
	emit(id, s < 0 ? -1 : 0, e, x);
	snprintf(id, sizeof id, "vfio.%s.seek_end", phase);
	EMIT(id, lseek(b, 0, SEEK_END), NULL);
	snprintf(id, sizeof id, "vfio.%s.poll", phase);
	emit(id, 0, 0, pollbits(b, POLLIN | POLLOUT, y, sizeof y));
	snprintf(id, sizeof id, "vfio.%s.set_name", phase);
	EMIT(id, ioctl(b, DMA_BUF_SET_NAME_B, phase), NULL);
	snprintf(id, sizeof id, "vfio.%s.mmap", phase);
	void *p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, b, 0);
	emit(id, p == MAP_FAILED ? -1 : 0, p == MAP_FAILED ? errno : 0, NULL);
	snprintf(id, sizeof id, "vfio.%s.vgem_import", phase);
	struct drm_prime_handle ph = { .fd = b };
	EMIT(id, ioctl(vgem_fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, &ph), NULL);
}

struct feat { uint32_t argsz, flags, region_index, open_flags, dflags, nr_ranges; uint64_t r[8]; };

static int feat_call(int dev, uint32_t flags, uint32_t bar, uint32_t open_flags, uint32_t dflags,
		     uint32_t nr, const uint64_t *ranges, uint32_t argsz)
{
	struct feat f = { .argsz = argsz ? argsz : 24 + 16 * nr, .flags = flags, .region_index = bar,
			  .open_flags = open_flags, .dflags = dflags, .nr_ranges = nr };
	for (uint32_t i = 0; i < nr && i < 4; i++) {
		f.r[2 * i] = ranges[2 * i];
		f.r[2 * i + 1] = ranges[2 * i + 1];
	}
	return ioctl(dev, VFIO_DEVICE_FEATURE, &f);
}

static void vfio_part(const char *bdf, const char *group)
{
	char x[512], path[64];
	int cont = open("/dev/vfio/vfio", O_RDWR);
	snprintf(path, sizeof path, "/dev/vfio/%s", group);
	int grp = open(path, O_RDWR);
	long long r = CALL(ioctl(grp, VFIO_GROUP_SET_CONTAINER, &cont));
	if (r == 0)
		r = CALL(ioctl(cont, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU));
	int dev = r == 0 ? CALL(ioctl(grp, VFIO_GROUP_GET_DEVICE_FD, bdf)) : -1;
	snprintf(x, sizeof x, "container=%s,group=%s", cont >= 0 ? "open" : "none", grp >= 0 ? "open" : "none");
	emit("vfio.setup", dev < 0 ? -1 : 0, dev < 0 ? _e : 0, x);
	if (dev < 0)
		return;
	const uint32_t G = FEAT_GET | FEAT_DMA_BUF;
	uint64_t ok[2] = { 0, PAGE }, two[4] = { 0, PAGE, 2 * PAGE, 2 * PAGE };
	EMIT("vfio.probe", feat_call(dev, FEAT_PROBE | G, 0, 0, 0, 0, NULL, 8), NULL);
	EMIT("vfio.null", ioctl(dev, VFIO_DEVICE_FEATURE, NULL), NULL);
	EMIT("vfio.argsz_4", feat_call(dev, G, 0, O_RDWR, 0, 1, ok, 4), NULL);
	EMIT("vfio.unknown_flag_bit", feat_call(dev, G | (1u << 20), 0, O_RDWR, 0, 1, ok, 0), NULL);
	EMIT("vfio.get_and_set", feat_call(dev, G | FEAT_SET, 0, O_RDWR, 0, 1, ok, 0), NULL);
	EMIT("vfio.set", feat_call(dev, FEAT_SET | FEAT_DMA_BUF, 0, O_RDWR, 0, 1, ok, 0), NULL);
	EMIT("vfio.neither", feat_call(dev, FEAT_DMA_BUF, 0, O_RDWR, 0, 1, ok, 0), NULL);
	EMIT("vfio.unknown_feature", feat_call(dev, FEAT_GET | 0x7ff, 0, O_RDWR, 0, 1, ok, 0), NULL);
	EMIT("vfio.payload_short", feat_call(dev, G, 0, O_RDWR, 0, 1, ok, 20), NULL);
	EMIT("vfio.flags_nonzero", feat_call(dev, G, 0, O_RDWR, 1, 1, ok, 0), NULL);
	EMIT("vfio.nr_ranges_0", feat_call(dev, G, 0, O_RDWR, 0, 0, NULL, 0), NULL);
	EMIT("vfio.bar_6", feat_call(dev, G, 6, O_RDWR, 0, 1, ok, 0), NULL);
	EMIT("vfio.bar_absent", feat_call(dev, G, 2, O_RDWR, 0, 1, ok, 0), NULL);
	uint64_t zl[2] = { 0, 0 }, ua[2] = { 1, PAGE }, ul[2] = { 0, 100 }, past[2] = { 1 << 20, PAGE },
		 big[2] = { 0, 2 << 20 }, wrap[2] = { ~0ull - PAGE + 1, PAGE }, b63[2] = { 0, 1ull << 63 },
		 ovf[4] = { 0, ~0ull - PAGE + 1, 0, 2 * PAGE };
	EMIT("vfio.zero_length", feat_call(dev, G, 0, O_RDWR, 0, 1, zl, 0), NULL);
	EMIT("vfio.unaligned_offset", feat_call(dev, G, 0, O_RDWR, 0, 1, ua, 0), NULL);
	EMIT("vfio.unaligned_length", feat_call(dev, G, 0, O_RDWR, 0, 1, ul, 0), NULL);
	EMIT("vfio.past_bar_end", feat_call(dev, G, 0, O_RDWR, 0, 1, past, 0), NULL);
	EMIT("vfio.longer_than_bar", feat_call(dev, G, 0, O_RDWR, 0, 1, big, 0), NULL);
	EMIT("vfio.offset_wraps", feat_call(dev, G, 0, O_RDWR, 0, 1, wrap, 0), NULL);
	EMIT("vfio.length_bit63", feat_call(dev, G, 0, O_RDWR, 0, 1, b63, 0), NULL);
	EMIT("vfio.sum_overflows", feat_call(dev, G, 0, O_RDWR, 0, 2, ovf, 0), NULL);

	int b = CALL(feat_call(dev, G, 0, O_RDWR | O_CLOEXEC, 0, 2, two, 0));
	int e = _e;
	x[0] = 0;
	if (b >= 0)
		fdinfo(b, FD_KEYS, x, sizeof x);
	emit("vfio.export_two_ranges", b < 0 ? -1 : 0, e, x);
	if (b < 0)
		return;
	int ro = CALL(feat_call(dev, G, 0, O_RDONLY | O_APPEND | O_NONBLOCK, 0, 1, ok, 0));
	e = _e;
	x[0] = 0;
	if (ro >= 0)
		fdinfo(ro, (const char *const[]){ "flags", "size", NULL }, x, sizeof x);
	emit("vfio.export_open_flags", ro < 0 ? -1 : 0, e, x);
	if (ro >= 0)
		close(ro);
	void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	emit("vfio.mmap", p == MAP_FAILED ? -1 : 0, p == MAP_FAILED ? errno : 0, NULL);
	/* vgem importing the BAR: VFIO refuses importers without peer2peer */
	struct drm_prime_handle ph = { .fd = b };
	EMIT("vfio.vgem_import", ioctl(vgem_fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, &ph), NULL);

	/* the ABI of the buffer before, across and after memory off, reset and close */
	buf_abi("idle", b);
	EMIT("vfio.memory_off", set_memory(dev, 0), NULL);
	buf_abi("memory_off", b);
	int born = CALL(feat_call(dev, G, 0, O_RDWR | O_CLOEXEC, 0, 1, ok, 0));
	emit("vfio.export_while_memory_off", born < 0 ? -1 : 0, _e, NULL);
	EMIT("vfio.memory_on", set_memory(dev, 1), NULL);
	buf_abi("memory_on", b);
	if (born >= 0) {
		buf_abi("born_revoked", born);
		close(born);
	}
	EMIT("vfio.device_reset", ioctl(dev, VFIO_DEVICE_RESET), NULL);
	buf_abi("after_reset", b);
	int again = CALL(feat_call(dev, G, 0, O_RDWR | O_CLOEXEC, 0, 1, ok, 0));
	emit("vfio.export_after_reset", again < 0 ? -1 : 0, _e, NULL);
	if (again >= 0)
		close(again);
	EMIT("vfio.device_close", close(dev), NULL);
	buf_abi("after_close", b);
	close(b);
	close(grp);
	close(cont);
}


/* ---- the kmod part: the test importer against VFIO's revoke ------------ */
/*
 * For each importer kind: a fresh device fd, a buffer of BAR0's first page,
 * attach and map through the test importer, then VFIO_DEVICE_RESET, memory
 * decode off and on, and the device fd's close, each followed by a map. An
 * exporter operation runs beside a watchdog: if it has not returned after
 * KMOD_BLOCK_MS the watchdog makes the importer unmap (DTI_UNMAP) and the
 * case says blocked=1; if it still has not returned KMOD_HANG_MS later the
 * probe prints "@@FATAL hang ..." and reboots (qemu exits): never a silent
 * timeout. The extra of a case is what the importer saw meanwhile, from its
 * event log, in order; the raw log with timestamps follows each kind on
 * lines starting "kmodlog" (for people; the harness ignores them).
 */
#define KMOD_BLOCK_MS 2000
#define KMOD_HANG_MS 15000
static const char *const kmod_modes[] = { "static", "odp", "gpu", "pinned", "lying", "lazy",
					  "cache_lazy", "cache_revalidate" };
static unsigned kmod_domain, kmod_bus, kmod_devfn;
static int kmod_cursor; /* log lines already reported */

/* The importer's events since the last call, "a+b:ERR+c" (rets only when nonzero). */
static void kmod_events(int s, char *out, size_t cap)
{
	static char text[65536];
	ssize_t n = pread(s, text, sizeof text - 1, 0);
	size_t o = 0;
	int line = 0;
	out[0] = 0;
	if (n < 0) {
		snprintf(out, cap, "read:%s", ename(errno));
		return;
	}
	text[n] = 0;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save), line++) {
		unsigned long long t;
		char ev[32];
		int r;
		if (line < kmod_cursor || sscanf(l, "%llu %31s %d", &t, ev, &r) != 3 || !strcmp(ev, "mark"))
			continue;
		o += snprintf(out + o, o < cap ? cap - o : 0, "%s%s", o ? "+" : "", ev);
		if (r)
			o += snprintf(out + o, o < cap ? cap - o : 0, ":%s", ename(-r));
	}
	kmod_cursor = line;
	if (!o)
		snprintf(out, cap, "none");
}

struct kmod_wd {
	int sess;
	const char *mode, *op;
	volatile int done;
	int released, release_ret, release_err;
};

static void *kmod_watchdog(void *arg)
{
	struct kmod_wd *w = arg;
	long long t0 = now_ms();
	while (!w->done && now_ms() - t0 < KMOD_BLOCK_MS)
		usleep(5000);
	if (w->done)
		return NULL;
	w->released = 1;
	errno = 0;
	w->release_ret = ioctl(w->sess, DTI_UNMAP);
	w->release_err = w->release_ret < 0 ? errno : 0;
	printf("kmodlog %s %s blocked for %d ms: the importer is told to unmap (ret %d %s)\n", w->mode, w->op,
	       KMOD_BLOCK_MS, w->release_ret, ename(w->release_err));
	while (!w->done && now_ms() - t0 < KMOD_BLOCK_MS + KMOD_HANG_MS)
		usleep(5000);
	if (!w->done) {
		printf("@@FATAL hang mode=%s op=%s: the exporter did not return %d ms after the importer unmapped\n",
		       w->mode, w->op, KMOD_HANG_MS);
		fflush(stdout);
		sync();
		reboot(RB_AUTOBOOT);
	}
	return NULL;
}

enum kmod_op { OP_RESET, OP_MEM_OFF, OP_MEM_ON, OP_CLOSE };

/* Runs an exporter operation beside the watchdog and emits its case. */
static void kmod_exporter_op(int s, int *dev, const char *mode, const char *op, enum kmod_op which)
{
	char id[96], ev[1024], x[1200];
	struct kmod_wd w = { .sess = s, .mode = mode, .op = op };
	pthread_t th;
	long long r, t0 = now_ms();
	int e;
	pthread_create(&th, NULL, kmod_watchdog, &w);
	errno = 0;
	switch (which) {
	case OP_RESET: r = ioctl(*dev, VFIO_DEVICE_RESET); break;
	case OP_MEM_OFF: r = set_memory(*dev, 0); break;
	case OP_MEM_ON: r = set_memory(*dev, 1); break;
	default: r = close(*dev); *dev = -1; break;
	}
	e = r < 0 ? errno : 0;
	w.done = 1;
	pthread_join(th, NULL);
	printf("kmodlog %s %s returned after %lld ms\n", mode, op, now_ms() - t0);
	kmod_events(s, ev, sizeof ev);
	snprintf(x, sizeof x, "blocked=%d,ev=%s", w.released, ev);
	snprintf(id, sizeof id, "kmod.%s.%s", mode, op);
	emit(id, r, e, x);
}

/* An importer call and its case, with the events it caused. */
static void kmod_call(int s, const char *mode, const char *what, unsigned long cmd)
{
	char id[96], ev[1024];
	long long r = CALL(ioctl(s, cmd));
	int e = _e;
	kmod_events(s, ev, sizeof ev);
	snprintf(id, sizeof id, "kmod.%s.%s", mode, what);
	emit(id, r, e, ev);
}

static void kmod_dump(int s, const char *mode)
{
	static char text[65536];
	ssize_t n = pread(s, text, sizeof text - 1, 0);
	if (n < 0)
		return;
	text[n] = 0;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		printf("kmodlog %s %s\n", mode, l);
}

static int kmod_attach(int s, int fd, unsigned mode, unsigned bus)
{
	struct dti_attach a = { .fd = fd, .mode = mode, .domain = kmod_domain, .bus = bus,
				.devfn = kmod_devfn, .delay_ms = 50 };
	return ioctl(s, DTI_ATTACH, &a);
}

static void kmod_bad(int grp, const char *bdf)
{
	const uint32_t G = FEAT_GET | FEAT_DMA_BUF;
	uint64_t ok[2] = { 0, PAGE };
	int dev = ioctl(grp, VFIO_GROUP_GET_DEVICE_FD, bdf);
	int b = dev < 0 ? -1 : feat_call(dev, G, 0, O_RDWR | O_CLOEXEC, 0, 1, ok, 0);
	int s = open("/dev/dmabuf_test_importer", O_RDWR | O_CLOEXEC);
	int sf = b < 0 ? -1 : export_sync(b, 3); /* a sync_file: an fd that is not a dma-buf */
	struct dti_attach a = { .fd = b, .mode = 99, .domain = kmod_domain, .bus = kmod_bus, .devfn = kmod_devfn };
	EMIT("kmod.bad.unknown_mode", ioctl(s, DTI_ATTACH, &a), NULL);
	EMIT("kmod.bad.not_dmabuf", kmod_attach(s, sf, DTI_ODP, kmod_bus), NULL);
	EMIT("kmod.bad.closed_fd", kmod_attach(s, -1, DTI_ODP, kmod_bus), NULL);
	EMIT("kmod.bad.no_pci_device", kmod_attach(s, b, DTI_ODP, 250), NULL);
	EMIT("kmod.bad.null_argument", ioctl(s, DTI_ATTACH, NULL), NULL);
	EMIT("kmod.bad.map_unattached", ioctl(s, DTI_MAP), NULL);
	EMIT("kmod.bad.unmap_unattached", ioctl(s, DTI_UNMAP), NULL);
	EMIT("kmod.bad.detach_unattached", ioctl(s, DTI_DETACH), NULL);
	EMIT("kmod.bad.unknown_ioctl", ioctl(s, _IO(DTI_IOC_MAGIC, 99)), NULL);
	EMIT("kmod.bad.mark_256", ioctl(s, DTI_MARK, 256), NULL);
	EMIT("kmod.bad.attach", kmod_attach(s, b, DTI_ODP, kmod_bus), NULL);
	EMIT("kmod.bad.attach_twice", kmod_attach(s, b, DTI_ODP, kmod_bus), NULL);
	EMIT("kmod.bad.unmap_unmapped", ioctl(s, DTI_UNMAP), NULL);
	EMIT("kmod.bad.map", ioctl(s, DTI_MAP), NULL);
	EMIT("kmod.bad.map_again", ioctl(s, DTI_MAP), NULL);
	EMIT("kmod.bad.unmap", ioctl(s, DTI_UNMAP), NULL);
	EMIT("kmod.bad.double_unmap", ioctl(s, DTI_UNMAP), NULL);
	EMIT("kmod.bad.unpin_unpinned", ioctl(s, DTI_UNPIN), NULL);
	EMIT("kmod.bad.pin", ioctl(s, DTI_PIN), NULL);
	EMIT("kmod.bad.pin_twice", ioctl(s, DTI_PIN), NULL);
	EMIT("kmod.bad.unpin", ioctl(s, DTI_UNPIN), NULL);
	EMIT("kmod.bad.detach", ioctl(s, DTI_DETACH), NULL);
	EMIT("kmod.bad.map_after_detach", ioctl(s, DTI_MAP), NULL);
	/* the importer's file closed with a live mapping: release unmaps and detaches */
	int s2 = open("/dev/dmabuf_test_importer", O_RDWR | O_CLOEXEC);
	kmod_attach(s2, b, DTI_ODP, kmod_bus);
	ioctl(s2, DTI_MAP);
	EMIT("kmod.bad.close_mapped", close(s2), NULL);
	close(sf);
	close(s);
	close(b);
	if (dev >= 0)
		close(dev);
}

static void kmod_part(const char *bdf, const char *group)
{
	char path[64], x[256], ev[1024], id[96];
	unsigned dom, bus, sl, fn;
	if (sscanf(bdf, "%x:%x:%x.%x", &dom, &bus, &sl, &fn) != 4) {
		printf("@@FATAL bad-bdf %s\n", bdf);
		return;
	}
	kmod_domain = dom;
	kmod_bus = bus;
	kmod_devfn = (sl << 3) | fn;
	int cont = open("/dev/vfio/vfio", O_RDWR);
	snprintf(path, sizeof path, "/dev/vfio/%s", group);
	int grp = open(path, O_RDWR);
	long long r = CALL(ioctl(grp, VFIO_GROUP_SET_CONTAINER, &cont));
	if (r == 0)
		r = CALL(ioctl(cont, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU));
	int probe_s = open("/dev/dmabuf_test_importer", O_RDWR | O_CLOEXEC);
	snprintf(x, sizeof x, "container=%s,group=%s,importer=%s", cont >= 0 ? "open" : "none",
		 grp >= 0 ? "open" : "none", probe_s >= 0 ? "open" : ename(errno));
	emit("kmod.setup", r < 0 || probe_s < 0 ? -1 : 0, r < 0 ? _e : probe_s < 0 ? errno : 0, x);
	if (r < 0 || probe_s < 0)
		return;
	close(probe_s);
	kmod_bad(grp, bdf);
	const uint32_t G = FEAT_GET | FEAT_DMA_BUF;
	uint64_t ok[2] = { 0, PAGE };
	for (unsigned m = 0; m < DTI_NR_MODES; m++) {
		const char *mode = kmod_modes[m];
		int dev = ioctl(grp, VFIO_GROUP_GET_DEVICE_FD, bdf);
		int b = dev < 0 ? -1 : feat_call(dev, G, 0, O_RDWR | O_CLOEXEC, 0, 1, ok, 0);
		int s = open("/dev/dmabuf_test_importer", O_RDWR | O_CLOEXEC);
		kmod_cursor = 0;
		if (dev < 0 || b < 0 || s < 0) {
			printf("@@FATAL kmod-setup mode=%s dev=%d buf=%d importer=%d errno=%s\n", mode, dev, b, s,
			       ename(errno));
			return;
		}
		r = CALL(kmod_attach(s, b, m, kmod_bus));
		int e = _e;
		kmod_events(s, ev, sizeof ev);
		snprintf(id, sizeof id, "kmod.%s.attach", mode);
		emit(id, r, e, ev);
		kmod_call(s, mode, "map", DTI_MAP);
		kmod_exporter_op(s, &dev, mode, "reset", OP_RESET);
		kmod_call(s, mode, "map_after_reset", DTI_MAP);
		kmod_exporter_op(s, &dev, mode, "memory_off", OP_MEM_OFF);
		kmod_call(s, mode, "map_while_off", DTI_MAP);
		kmod_exporter_op(s, &dev, mode, "memory_on", OP_MEM_ON);
		kmod_call(s, mode, "map_after_on", DTI_MAP);
		kmod_exporter_op(s, &dev, mode, "close", OP_CLOSE);
		kmod_call(s, mode, "map_after_close", DTI_MAP);
		kmod_call(s, mode, "detach", DTI_DETACH);
		kmod_dump(s, mode);
		close(s);
		close(b);
	}
	close(grp);
	close(cont);
}

int main(int argc, char **argv)
{
	struct utsname u;
	const char *part = argc > 1 ? argv[1] : "abi";
	uname(&u);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("@@BEGIN part=%s release=%s version=%s\n", part, u.release, u.version);
	heap_fd = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
	vgem_fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
	if (heap_fd < 0 || vgem_fd < 0) {
		printf("@@FATAL missing-device heap=%s vgem=%s\n", heap_fd < 0 ? ename(errno) : "ok",
		       vgem_fd < 0 ? "missing" : "ok");
		return 2;
	}
	if (!strcmp(part, "abi")) {
		case_sync();
		case_name();
		case_fdinfo();
		case_heap();
		case_seek_rw();
		case_poll();
		case_mmap();
		case_export_import();
		case_unsignalled();
		case_sync_file();
		case_exporters();
	} else if (!strcmp(part, "vfio") && argc > 3) {
		vfio_part(argv[2], argv[3]);
	} else if (!strcmp(part, "kmod") && argc > 3) {
		kmod_part(argv[2], argv[3]);
	} else {
		printf("@@FATAL usage part=%s\n", part);
		return 2;
	}
	printf("@@END part=%s cases=%d\n", part, ncases);
	return 0;
}
