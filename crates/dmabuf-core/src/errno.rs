//! Kernel errno values (x86-64 / asm-generic numbering), typed, and the
//! trait every error type of the project implements so that
//! userspace-facing code can answer like the kernel does.
//!
//! Contract:
//! * An [`Errno`] is always a positive kernel errno in `1..=`[`MAX_ERRNO`]:
//!   `EINVAL`, never `-EINVAL`, never 0. Its constructor
//!   [`Errno::new`] is total: it accepts either sign and maps anything that
//!   is no kernel errno at all to `EINVAL`.
//! * The kernel's `-errno` convention (fence status, syscall return values)
//!   exists only at the edges, through [`Errno::to_negative`]; the raw
//!   number through [`Errno::get`].
//! * [`Errno::name`] and `Display` give the symbolic name (`ENODEV`), `E?`
//!   for a valid errno without a name here.
//! * [`AsErrno`] is implemented by every error type: the errno the kernel
//!   would report for it.

use std::fmt;

/// The largest errno an error pointer may carry.
pub const MAX_ERRNO: i32 = 4095;

/// A positive kernel errno (`1..=`[`MAX_ERRNO`]), e.g. [`Errno::ENODEV`].
///
/// Typed so that an errno cannot be mixed up with a negative return value,
/// a file descriptor or a count; the raw number only at ABI edges through
/// [`Errno::get`] or [`Errno::to_negative`].
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Errno(i32);

/// Declares the named errnos once: associated constants on [`Errno`],
/// module-level constants of the same name, and [`Errno::name`].
macro_rules! errnos {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal,)*) => {
        impl Errno {
            $(
                $(#[doc = $doc])*
                pub const $name: Errno = Errno($value);
            )*

            /// The symbolic name (`"EINVAL"`), for messages and traces;
            /// `E?` for an errno without a name here.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $($value => stringify!($name),)*
                    _ => "E?",
                }
            }
        }

        $(
            $(#[doc = $doc])*
            pub const $name: Errno = Errno::$name;
        )*
    };
}

errnos! {
    /// Operation not permitted.
    EPERM = 1,
    /// No such file or directory / entry.
    ENOENT = 2,
    /// Interrupted system call.
    EINTR = 4,
    /// I/O error.
    EIO = 5,
    /// Bad file descriptor.
    EBADF = 9,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Bad address.
    EFAULT = 14,
    /// Device or resource busy.
    EBUSY = 16,
    /// No such device.
    ENODEV = 19,
    /// Invalid argument.
    EINVAL = 22,
    /// Too many open files.
    EMFILE = 24,
    /// Illegal seek.
    ESPIPE = 29,
    /// Inappropriate ioctl for device.
    ENOTTY = 25,
    /// Resource deadlock would occur.
    EDEADLK = 35,
    /// Value too large for defined data type.
    EOVERFLOW = 75,
    /// Operation not supported.
    EOPNOTSUPP = 95,
    /// Connection timed out.
    ETIMEDOUT = 110,
    /// Operation already in progress.
    EALREADY = 114,
    /// Operation canceled.
    ECANCELED = 125,
    /// Kernel-internal: restart the system call after a signal.
    ERESTARTSYS = 512,
}

impl Errno {
    /// The errno of `raw`, which may be given either way round (`EINVAL` or
    /// `-EINVAL`). Total: a value that is no kernel errno at all (0, or
    /// beyond [`MAX_ERRNO`] either way, `i32::MIN` included) is `EINVAL`.
    pub const fn new(raw: i32) -> Errno {
        match raw.checked_abs() {
            Some(e) if 1 <= e && e <= MAX_ERRNO => Errno(e),
            _ => Errno::EINVAL,
        }
    }

    /// The same as [`Errno::new`], under the name conversions usually have.
    pub const fn from_raw(raw: i32) -> Errno {
        Errno::new(raw)
    }

    /// The positive number (`22` for `EINVAL`).
    pub const fn get(self) -> i32 {
        self.0
    }

    /// The kernel's negative form (`-22` for `EINVAL`), as a fence status
    /// or a syscall's return value carries it.
    pub const fn to_negative(self) -> i32 {
        -self.0
    }
}

/// The symbolic name, e.g. `ENODEV`.
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The symbolic name of a raw errno number as it crosses an ABI (printed
/// by a real kernel, returned by a simulated syscall), either sign. Total:
/// `E?` for 0, for any value that is not one of the errnos above and for
/// one beyond [`MAX_ERRNO`] (`i32::MIN` included).
pub fn raw_name(raw: i32) -> &'static str {
    match raw.checked_abs() {
        Some(e) if (1..=MAX_ERRNO).contains(&e) => Errno(e).name(),
        _ => "E?",
    }
}

/// Errors that the kernel would report as an errno.
pub trait AsErrno {
    /// The errno (`EINVAL`, not `-EINVAL`).
    fn errno(&self) -> Errno;
}

/// A malformed schedule token or a replay that does not fit its program is
/// bad input.
#[cfg(not(loom))]
impl AsErrno for crate::sync::sched::ScheduleError {
    fn errno(&self) -> Errno {
        EINVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_total_and_sign_blind() {
        assert_eq!(EINVAL.name(), "EINVAL");
        assert_eq!(Errno::new(-ENOMEM.get()).name(), "ENOMEM");
        assert_eq!(Errno::new(MAX_ERRNO).name(), "E?");
        assert_eq!(raw_name(EINVAL.get()), "EINVAL");
        assert_eq!(raw_name(ENOMEM.to_negative()), "ENOMEM");
        assert_eq!(raw_name(i32::MIN), "E?");
        assert_eq!(raw_name(i32::MAX), "E?");
        assert_eq!(raw_name(0), "E?");
    }

    #[test]
    fn display_is_the_symbolic_name() {
        assert_eq!(ENODEV.to_string(), "ENODEV");
        assert_eq!(format!("{}", Errno::ERESTARTSYS), "ERESTARTSYS");
    }

    #[test]
    fn positive_is_total_and_never_negative() {
        assert_eq!(Errno::new(EIO.to_negative()), EIO);
        assert_eq!(Errno::new(EBUSY.get()), EBUSY);
        assert_eq!(Errno::new(ERESTARTSYS.to_negative()), ERESTARTSYS);
        assert_eq!(Errno::new(i32::MIN), EINVAL);
        assert_eq!(Errno::new(i32::MAX), EINVAL);
        assert_eq!(Errno::new(0), EINVAL);
        assert_eq!(Errno::new(-MAX_ERRNO).get(), MAX_ERRNO);
        assert_eq!(Errno::new(MAX_ERRNO + 1), EINVAL);
        assert_eq!(Errno::from_raw(-22), EINVAL);
    }

    #[test]
    fn accessors_round_trip() {
        assert_eq!(EPERM.get(), 1);
        assert_eq!(EPERM.to_negative(), -1);
        assert_eq!(Errno::new(ENODEV.to_negative()), ENODEV);
    }
}
