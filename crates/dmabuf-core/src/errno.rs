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
/// Permission denied.
pub const EACCES: i32 = 13;
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

/// A malformed schedule token or a replay that does not fit its program is
/// bad input.
#[cfg(not(loom))]
impl Errno for crate::sync::sched::ScheduleError {
    fn errno(&self) -> i32 {
        EINVAL
    }
}

/// The positive errno of `errno`, which may be given either way round
/// (`EINVAL` or `-EINVAL`). Total: a value that is no kernel errno at all
/// (0, or beyond [`MAX_ERRNO`] either way, `i32::MIN` included) is
/// `EINVAL`, never a negative or overflowed number.
pub fn positive(errno: i32) -> i32 {
    match errno.checked_abs() {
        Some(e) if (1..=MAX_ERRNO).contains(&e) => e,
        _ => EINVAL,
    }
}

/// The symbolic name of an errno, for messages and traces. Total: `E?` for
/// any value that is not one of the errnos above (`i32::MIN` included).
pub fn name(errno: i32) -> &'static str {
    let Ok(errno) = i32::try_from(errno.unsigned_abs()) else {
        return "E?";
    };
    match errno {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EINTR => "EINTR",
        EIO => "EIO",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_total_and_sign_blind() {
        assert_eq!(name(EINVAL), "EINVAL");
        assert_eq!(name(-ENOMEM), "ENOMEM");
        assert_eq!(name(i32::MIN), "E?");
        assert_eq!(name(i32::MAX), "E?");
        assert_eq!(name(0), "E?");
    }

    #[test]
    fn positive_is_total_and_never_negative() {
        assert_eq!(positive(-EIO), EIO);
        assert_eq!(positive(EBUSY), EBUSY);
        assert_eq!(positive(-ERESTARTSYS), ERESTARTSYS);
        assert_eq!(positive(i32::MIN), EINVAL);
        assert_eq!(positive(i32::MAX), EINVAL);
        assert_eq!(positive(0), EINVAL);
        assert_eq!(positive(-MAX_ERRNO), MAX_ERRNO);
        assert_eq!(positive(MAX_ERRNO + 1), EINVAL);
    }
}
