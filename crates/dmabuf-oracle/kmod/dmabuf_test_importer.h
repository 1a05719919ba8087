/* SPDX-License-Identifier: MIT OR GPL-2.0-only */
/*
 * Control interface of the dma-buf test importer (/dev/dmabuf_test_importer),
 * shared by the module and the oracle's probe. One open file is one importer
 * with at most one attachment. Every ioctl returns 0 or -1 with errno;
 * read() returns the event log as text, one event a line:
 *   "<usecs since attach> <event> <ret>"
 */
#ifndef DMABUF_TEST_IMPORTER_H
#define DMABUF_TEST_IMPORTER_H

#ifdef __KERNEL__
#include <linux/ioctl.h>
#include <linux/types.h>
#else
#include <stdint.h>
#include <sys/ioctl.h>
typedef int32_t __s32;
typedef uint32_t __u32;
#endif

/* Importer kinds (the project's importer protocol files of the same name). */
enum dti_mode {
	DTI_STATIC = 0,        /* dma_buf_attach: no importer ops, no peer2peer */
	DTI_ODP = 1,           /* rdma-odp / iommufd: unmaps inside the callback */
	DTI_GPU = 2,           /* gpu: the callback queues a worker that unmaps later */
	DTI_PINNED = 3,        /* rdma-pinned: peer2peer ops without invalidate_mappings, pins */
	DTI_LYING = 4,         /* declares invalidate_mappings, ignores it, unmaps only on DTI_UNMAP */
	DTI_LAZY = 5,          /* the callback marks the mapping stale; unmaps on DTI_UNMAP or the next DTI_MAP */
	DTI_CACHE_LAZY = 6,    /* unmaps in the callback; the next DTI_MAP maps; an ENODEV is cached until the next invalidate */
	DTI_CACHE_REVALIDATE = 7, /* unmaps and maps again inside the callback; an ENODEV is cached until the next invalidate */
	DTI_NR_MODES = 8,
};

struct dti_attach {
	__s32 fd;      /* the dma-buf */
	__u32 mode;    /* enum dti_mode */
	__u32 domain;  /* PCI device used as the importing device (dma_buf_attach's dev) */
	__u32 bus;
	__u32 devfn;
	__u32 delay_ms; /* DTI_GPU: the worker's delay */
};

#define DTI_IOC_MAGIC 'D'
#define DTI_ATTACH _IOW(DTI_IOC_MAGIC, 1, struct dti_attach)
#define DTI_MAP _IO(DTI_IOC_MAGIC, 2)
#define DTI_UNMAP _IO(DTI_IOC_MAGIC, 3)
#define DTI_PIN _IO(DTI_IOC_MAGIC, 4)
#define DTI_UNPIN _IO(DTI_IOC_MAGIC, 5)
#define DTI_DETACH _IO(DTI_IOC_MAGIC, 6)
/* Puts a marker (the argument, 0..255) into the log. */
#define DTI_MARK _IO(DTI_IOC_MAGIC, 7)
/* Empties the log. */
#define DTI_CLEAR _IO(DTI_IOC_MAGIC, 8)

#endif
