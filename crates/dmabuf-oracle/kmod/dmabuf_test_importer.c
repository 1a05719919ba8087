// SPDX-License-Identifier: MIT OR GPL-2.0-only
/*
 * dmabuf_test_importer: a dma-buf importer driven from userspace, so that a
 * test program can watch what an exporter's revoke does to an importer
 * (Linux 7.1+: dma_buf_invalidate_mappings, dma_buf_attach_revocable).
 *
 * Contract. One open file of /dev/dmabuf_test_importer is one importer with
 * at most one attachment (kernel: struct dma_buf_attachment) made with the
 * PCI device the caller names as the importing device. The importer kind
 * (enum dti_mode in dmabuf_test_importer.h) decides the importer ops and
 * what the invalidate_mappings callback does:
 *
 * | mode             | attach                          | invalidate_mappings callback            | unmaps                    |
 * |------------------|---------------------------------|-----------------------------------------|---------------------------|
 * | static           | dma_buf_attach (no ops)         | none                                    | on DTI_UNMAP              |
 * | odp              | dynamic, peer2peer, op          | unmaps                                  | in the callback           |
 * | gpu              | dynamic, peer2peer, op          | queues a worker (delay_ms)              | in the worker             |
 * | pinned           | dynamic, peer2peer, no op       | none                                    | on DTI_UNMAP              |
 * | lying            | dynamic, peer2peer, op          | records it, nothing else                | on DTI_UNMAP              |
 * | lazy             | dynamic, peer2peer, op          | marks the mapping stale                 | on DTI_UNMAP or next MAP  |
 * | cache-lazy       | dynamic, peer2peer, op          | unmaps, forgets a cached error          | in the callback           |
 * | cache-revalidate | dynamic, peer2peer, op          | unmaps, forgets the cached error, maps  | in the callback           |
 * |                  |                                 | again; an error is cached               |                           |
 *
 * In the cache modes DTI_MAP answers a cached error without asking the
 * exporter until the next invalidate (the GPU importer bug the project's
 * protocol files model).
 *
 * States of the attachment: Detached -> Attached -> (Mapped <-> Attached)
 * -> Detached; DTI_MAP/UNMAP/PIN/UNPIN without an attachment give ENOTCONN,
 * DTI_UNMAP without a mapping EINVAL (double unmap), DTI_UNPIN without a pin
 * EINVAL, DTI_ATTACH while attached EBUSY, an unknown mode EINVAL, an fd
 * that is not a dma-buf the errno of dma_buf_get (EBADF or EINVAL), an
 * absent PCI device ENODEV, an unknown ioctl ENOTTY.
 *
 * Locks. `lock` (a mutex) serialises the ioctls of one file; the mapping
 * state (sgt, stale, want, cached_err) is protected by the buffer's
 * dma_resv lock, which the exporter holds when it calls
 * invalidate_mappings and which map/unmap/pin/unpin need for a dynamic
 * attachment; the worker takes only the dma_resv lock; the event log has
 * its own spinlock. Order: lock -> dma_resv -> log.
 */
#include <linux/dma-buf.h>
#include <linux/dma-resv.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>
#include "dmabuf_test_importer.h"

#define DTI_LOG_MAX 512

enum dti_ev {
	EV_ATTACH, EV_DETACH, EV_MAP, EV_MAP_CACHED, EV_MAP_KEPT, EV_UNMAP,
	EV_UNMAP_CB, EV_UNMAP_WORKER, EV_UNMAP_STALE, EV_INV, EV_REMAP_CB,
	EV_PIN, EV_UNPIN, EV_MARK,
};

static const char *const ev_name[] = {
	[EV_ATTACH] = "attach", [EV_DETACH] = "detach", [EV_MAP] = "map",
	[EV_MAP_CACHED] = "map-cached", [EV_MAP_KEPT] = "map-kept",
	[EV_UNMAP] = "unmap", [EV_UNMAP_CB] = "unmap-cb",
	[EV_UNMAP_WORKER] = "unmap-worker", [EV_UNMAP_STALE] = "unmap-stale",
	[EV_INV] = "inv", [EV_REMAP_CB] = "remap-cb", [EV_PIN] = "pin",
	[EV_UNPIN] = "unpin", [EV_MARK] = "mark",
};

struct dti_event {
	u64 t_ns;
	u8 kind;
	int ret;
};

struct dti {
	struct mutex lock;
	struct dma_buf *dmabuf;
	struct dma_buf_attachment *attach;
	struct pci_dev *pdev;
	u32 mode;
	u32 delay_ms;
	/* under dmabuf->resv */
	struct sg_table *sgt;
	bool stale, want, pinned;
	int cached_err;
	struct delayed_work work;
	/* the log */
	spinlock_t log_lock;
	u64 t0;
	unsigned int n, dropped;
	struct dti_event ev[DTI_LOG_MAX];
};

static void dti_log(struct dti *d, enum dti_ev kind, int ret)
{
	unsigned long flags;

	spin_lock_irqsave(&d->log_lock, flags);
	if (d->n < DTI_LOG_MAX) {
		d->ev[d->n].t_ns = ktime_get_ns();
		d->ev[d->n].kind = kind;
		d->ev[d->n].ret = ret;
		d->n++;
	} else {
		d->dropped++;
	}
	spin_unlock_irqrestore(&d->log_lock, flags);
}

static bool dti_dynamic(const struct dti *d)
{
	return d->mode != DTI_STATIC;
}

/* Maps; resv held for a dynamic attachment. */
static int dti_do_map(struct dti *d, enum dti_ev kind)
{
	struct sg_table *sgt;

	if (dti_dynamic(d))
		sgt = dma_buf_map_attachment(d->attach, DMA_BIDIRECTIONAL);
	else
		sgt = dma_buf_map_attachment_unlocked(d->attach, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt)) {
		dti_log(d, kind, PTR_ERR(sgt));
		return PTR_ERR(sgt);
	}
	d->sgt = sgt;
	d->stale = false;
	dti_log(d, kind, 0);
	return 0;
}

/* Unmaps; resv held for a dynamic attachment; sgt != NULL. */
static void dti_do_unmap(struct dti *d, enum dti_ev kind)
{
	if (dti_dynamic(d))
		dma_buf_unmap_attachment(d->attach, d->sgt, DMA_BIDIRECTIONAL);
	else
		dma_buf_unmap_attachment_unlocked(d->attach, d->sgt, DMA_BIDIRECTIONAL);
	d->sgt = NULL;
	d->stale = false;
	dti_log(d, kind, 0);
}

static void dti_worker(struct work_struct *w)
{
	struct dti *d = container_of(to_delayed_work(w), struct dti, work);

	dma_resv_lock(d->dmabuf->resv, NULL);
	if (d->sgt)
		dti_do_unmap(d, EV_UNMAP_WORKER);
	dma_resv_unlock(d->dmabuf->resv);
}

/* The exporter holds the buffer's dma_resv lock. */
static void dti_invalidate(struct dma_buf_attachment *attach)
{
	struct dti *d = attach->importer_priv;

	dma_resv_assert_held(attach->dmabuf->resv);
	dti_log(d, EV_INV, 0);
	switch (d->mode) {
	case DTI_ODP:
		if (d->sgt)
			dti_do_unmap(d, EV_UNMAP_CB);
		break;
	case DTI_GPU:
		mod_delayed_work(system_wq, &d->work, msecs_to_jiffies(d->delay_ms));
		break;
	case DTI_LAZY:
		if (d->sgt)
			d->stale = true;
		break;
	case DTI_CACHE_LAZY:
		d->cached_err = 0;
		if (d->sgt)
			dti_do_unmap(d, EV_UNMAP_CB);
		break;
	case DTI_CACHE_REVALIDATE:
		d->cached_err = 0;
		if (d->sgt)
			dti_do_unmap(d, EV_UNMAP_CB);
		if (d->want) {
			int r = dti_do_map(d, EV_REMAP_CB);

			if (r)
				d->cached_err = r;
		}
		break;
	default: /* DTI_LYING: ignores it */
		break;
	}
}

static const struct dma_buf_attach_ops dti_revocable_ops = {
	.allow_peer2peer = true,
	.invalidate_mappings = dti_invalidate,
};

static const struct dma_buf_attach_ops dti_pinned_ops = {
	.allow_peer2peer = true,
};

static int dti_attach(struct dti *d, const struct dti_attach *a)
{
	struct dma_buf_attachment *att;
	struct dma_buf *buf;
	struct pci_dev *pdev;

	if (a->mode >= DTI_NR_MODES || a->bus > 255 || a->devfn > 255)
		return -EINVAL;
	if (d->attach)
		return -EBUSY;
	buf = dma_buf_get(a->fd);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	pdev = pci_get_domain_bus_and_slot(a->domain, a->bus, a->devfn);
	if (!pdev) {
		dma_buf_put(buf);
		return -ENODEV;
	}
	d->mode = a->mode;
	d->delay_ms = min_t(u32, a->delay_ms, 10000);
	d->dmabuf = buf;
	d->sgt = NULL;
	d->stale = d->want = d->pinned = false;
	d->cached_err = 0;
	d->t0 = ktime_get_ns();
	if (a->mode == DTI_STATIC)
		att = dma_buf_attach(buf, &pdev->dev);
	else if (a->mode == DTI_PINNED)
		att = dma_buf_dynamic_attach(buf, &pdev->dev, &dti_pinned_ops, d);
	else
		att = dma_buf_dynamic_attach(buf, &pdev->dev, &dti_revocable_ops, d);
	if (IS_ERR(att)) {
		dti_log(d, EV_ATTACH, PTR_ERR(att));
		pci_dev_put(pdev);
		dma_buf_put(buf);
		d->dmabuf = NULL;
		return PTR_ERR(att);
	}
	d->attach = att;
	d->pdev = pdev;
	dti_log(d, EV_ATTACH, 0);
	return 0;
}

static void dti_lock(struct dti *d)
{
	if (dti_dynamic(d))
		dma_resv_lock(d->dmabuf->resv, NULL);
}

static void dti_unlock(struct dti *d)
{
	if (dti_dynamic(d))
		dma_resv_unlock(d->dmabuf->resv);
}

static int dti_map(struct dti *d)
{
	int r;

	dti_lock(d);
	d->want = true;
	if (d->cached_err) {
		r = d->cached_err;
		dti_log(d, EV_MAP_CACHED, r);
	} else if (d->sgt && !d->stale) {
		r = 0;
		dti_log(d, EV_MAP_KEPT, 0);
	} else {
		if (d->sgt)
			dti_do_unmap(d, EV_UNMAP_STALE);
		r = dti_do_map(d, EV_MAP);
		if (r && (d->mode == DTI_CACHE_LAZY || d->mode == DTI_CACHE_REVALIDATE))
			d->cached_err = r;
	}
	dti_unlock(d);
	return r;
}

static int dti_unmap(struct dti *d)
{
	int r = 0;

	dti_lock(d);
	d->want = false;
	if (d->sgt)
		dti_do_unmap(d, EV_UNMAP);
	else
		r = -EINVAL;
	dti_unlock(d);
	return r;
}

static int dti_pin(struct dti *d, bool pin)
{
	int r = 0;

	if (!dti_dynamic(d))
		return -EINVAL;
	dti_lock(d);
	if (pin) {
		if (d->pinned) {
			r = -EBUSY;
		} else {
			r = dma_buf_pin(d->attach);
			d->pinned = r == 0;
		}
		dti_log(d, EV_PIN, r);
	} else {
		if (!d->pinned) {
			r = -EINVAL;
		} else {
			dma_buf_unpin(d->attach);
			d->pinned = false;
		}
		dti_log(d, EV_UNPIN, r);
	}
	dti_unlock(d);
	return r;
}

/*
 * Called with d->lock held (or from release). The worker is cancelled after
 * dma_buf_detach: before it, an exporter's invalidate may queue it again.
 */
static void dti_detach(struct dti *d)
{
	if (!d->attach)
		return;
	dti_lock(d);
	if (d->sgt)
		dti_do_unmap(d, EV_UNMAP);
	if (d->pinned) {
		dma_buf_unpin(d->attach);
		d->pinned = false;
	}
	dti_unlock(d);
	dma_buf_detach(d->dmabuf, d->attach);
	/*
	 * Only now can no invalidate queue the worker again; a worker that
	 * still runs finds no mapping. The buffer is put after it is gone.
	 */
	cancel_delayed_work_sync(&d->work);
	dti_log(d, EV_DETACH, 0);
	d->attach = NULL;
	dma_buf_put(d->dmabuf);
	d->dmabuf = NULL;
	pci_dev_put(d->pdev);
	d->pdev = NULL;
}

static long dti_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct dti *d = f->private_data;
	struct dti_attach a;
	long r;

	if (cmd == DTI_ATTACH && copy_from_user(&a, (void __user *)arg, sizeof(a)))
		return -EFAULT;
	mutex_lock(&d->lock);
	switch (cmd) {
	case DTI_ATTACH:
		r = dti_attach(d, &a);
		break;
	case DTI_MARK:
		if (arg > 255) {
			r = -EINVAL;
		} else {
			dti_log(d, EV_MARK, arg);
			r = 0;
		}
		break;
	case DTI_CLEAR: {
		unsigned long flags;

		spin_lock_irqsave(&d->log_lock, flags);
		d->n = 0;
		d->dropped = 0;
		spin_unlock_irqrestore(&d->log_lock, flags);
		r = 0;
		break;
	}
	case DTI_MAP:
	case DTI_UNMAP:
	case DTI_PIN:
	case DTI_UNPIN:
	case DTI_DETACH:
		if (!d->attach) {
			r = -ENOTCONN;
			break;
		}
		if (cmd == DTI_MAP)
			r = dti_map(d);
		else if (cmd == DTI_UNMAP)
			r = dti_unmap(d);
		else if (cmd == DTI_PIN || cmd == DTI_UNPIN)
			r = dti_pin(d, cmd == DTI_PIN);
		else {
			dti_detach(d);
			r = 0;
		}
		break;
	default:
		r = -ENOTTY;
	}
	mutex_unlock(&d->lock);
	return r;
}

static ssize_t dti_read(struct file *f, char __user *buf, size_t len, loff_t *pos)
{
	struct dti *d = f->private_data;
	struct dti_event *copy;
	unsigned int n, dropped, i;
	unsigned long flags;
	size_t cap = (DTI_LOG_MAX + 1) * 48, at = 0;
	char *text;
	ssize_t r;
	u64 t0;

	copy = kvmalloc_array(DTI_LOG_MAX, sizeof(*copy), GFP_KERNEL);
	text = kvmalloc(cap, GFP_KERNEL);
	if (!copy || !text) {
		kvfree(copy);
		kvfree(text);
		return -ENOMEM;
	}
	spin_lock_irqsave(&d->log_lock, flags);
	n = d->n;
	dropped = d->dropped;
	t0 = d->t0;
	memcpy(copy, d->ev, n * sizeof(*copy));
	spin_unlock_irqrestore(&d->log_lock, flags);
	for (i = 0; i < n; i++)
		at += scnprintf(text + at, cap - at, "%llu %s %d\n",
				(unsigned long long)((copy[i].t_ns - t0) / 1000),
				ev_name[copy[i].kind], copy[i].ret);
	if (dropped)
		at += scnprintf(text + at, cap - at, "0 dropped %u\n", dropped);
	r = simple_read_from_buffer(buf, len, pos, text, at);
	kvfree(copy);
	kvfree(text);
	return r;
}

static int dti_open(struct inode *inode, struct file *f)
{
	struct dti *d = kvzalloc(sizeof(*d), GFP_KERNEL);

	if (!d)
		return -ENOMEM;
	mutex_init(&d->lock);
	spin_lock_init(&d->log_lock);
	INIT_DELAYED_WORK(&d->work, dti_worker);
	d->t0 = ktime_get_ns();
	f->private_data = d;
	return 0;
}

static int dti_release(struct inode *inode, struct file *f)
{
	struct dti *d = f->private_data;

	mutex_lock(&d->lock);
	dti_detach(d);
	mutex_unlock(&d->lock);
	mutex_destroy(&d->lock);
	kvfree(d);
	return 0;
}

static const struct file_operations dti_fops = {
	.owner = THIS_MODULE,
	.open = dti_open,
	.release = dti_release,
	.read = dti_read,
	.unlocked_ioctl = dti_ioctl,
	.llseek = default_llseek,
};

static struct miscdevice dti_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "dmabuf_test_importer",
	.fops = &dti_fops,
	.mode = 0600,
};

module_misc_device(dti_misc);

MODULE_DESCRIPTION("dma-buf test importer: makes an exporter's revoke observable from userspace");
MODULE_AUTHOR("dmabuf-revoke authors");
MODULE_LICENSE("Dual MIT/GPL");
MODULE_IMPORT_NS("DMA_BUF");
