//! Kernel errno values (x86-64 / asm-generic numbering) and the trait every
//! error type of the project implements so that userspace-facing code can
//! answer like the kernel does.

/// Operation not permitted.
pub const EPERM: i32 = 1;
/// No such file or directory / entry.
pub const ENOENT: i32 = 2;
/// Interrupted system call.
pub const EINTR: i32 = 4;
/// I/O error.
pub const EIO: i32 = 5;
/// Bad file descriptor.
pub const EBADF: i32 = 9;
/// Try again.
pub const EAGAIN: i32 = 11;
/// Out of memory.
pub const ENOMEM: i32 = 12;
/// Bad address.
pub const EFAULT: i32 = 14;
/// Device or resource busy.
pub const EBUSY: i32 = 16;
/// No such device.
pub const ENODEV: i32 = 19;
/// Invalid argument.
pub const EINVAL: i32 = 22;
/// Too many open files.
pub const EMFILE: i32 = 24;
/// Illegal seek.
pub const ESPIPE: i32 = 29;
/// Inappropriate ioctl for device.
pub const ENOTTY: i32 = 25;
/// Resource deadlock would occur.
pub const EDEADLK: i32 = 35;
/// Value too large for defined data type.
pub const EOVERFLOW: i32 = 75;
/// Operation not supported.
pub const EOPNOTSUPP: i32 = 95;
/// Connection timed out.
pub const ETIMEDOUT: i32 = 110;
/// Operation already in progress.
pub const EALREADY: i32 = 114;
/// Operation canceled.
pub const ECANCELED: i32 = 125;
/// Kernel-internal: restart the system call after a signal.
pub const ERESTARTSYS: i32 = 512;
/// The largest errno an error pointer may carry.
pub const MAX_ERRNO: i32 = 4095;

/// Errors that the kernel would report as an errno.
pub trait Errno {
    /// The positive errno value (`EINVAL`, not `-EINVAL`).
    fn errno(&self) -> i32;
}

/// The symbolic name of an errno, for messages and traces.
pub fn name(errno: i32) -> &'static str {
    match errno.abs() {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EINTR => "EINTR",
        EIO => "EIO",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        ENODEV => "ENODEV",
        EINVAL => "EINVAL",
        EMFILE => "EMFILE",
        ESPIPE => "ESPIPE",
        ENOTTY => "ENOTTY",
        EDEADLK => "EDEADLK",
        EOVERFLOW => "EOVERFLOW",
        EOPNOTSUPP => "EOPNOTSUPP",
        ETIMEDOUT => "ETIMEDOUT",
        EALREADY => "EALREADY",
        ECANCELED => "ECANCELED",
        ERESTARTSYS => "ERESTARTSYS",
        _ => "E?",
    }
}
