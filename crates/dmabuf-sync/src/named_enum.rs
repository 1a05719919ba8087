//! [`named_enum!`]: one table of `Variant => "name"` for an enum whose
//! variants have a fixed name each (command line, JSON, traces, reports),
//! instead of hand-written `ALL`, `name`, `Display` and `FromStr` that must
//! agree with each other.
//!
//! Contract of the generated items, for `enum E { A => "a", B => "b" }`:
//! * `E::ALL`: every variant, in declaration order.
//! * `E::name(self)`: the variant's name from the table.
//! * `Display`: the name, nothing else.
//! * `FromStr`: the variant whose name is exactly the string; anything else
//!   is an [`UnknownName`] that names the type, the string and every valid
//!   name (`unknown E 'c' (known: a, b)`).
//!
//! It lives in the lowest crate of the workspace so that every crate can
//! use it (through `dmabuf_core::named_enum!` above this one); it names
//! nothing of the project.

use std::fmt;

/// A string that is none of an enum's names (the `FromStr` error of every
/// [`named_enum!`] type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// The enum's type name.
    pub what: &'static str,
    /// The string given.
    pub name: String,
    /// Every valid name, in declaration order.
    pub known: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}' (known: {})",
            self.what,
            self.name,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

/// Declares a fieldless enum from one table of `Variant => "name"` and
/// generates `ALL`, `name`, `Display` and `FromStr` from it (see the
/// [module docs](crate::named_enum) for the contract).
///
/// Attributes on the enum (derives, docs) and on each variant (docs) are
/// kept; a variant may have an explicit discriminant (`Kernel = 0 =>
/// "kernel"`).
///
/// ```
/// dmabuf_sync::named_enum! {
///     /// A colour.
///     #[derive(Clone, Copy, Debug, PartialEq, Eq)]
///     pub enum Colour {
///         /// Red.
///         Red => "red",
///         /// Dark blue.
///         DarkBlue => "dark-blue",
///     }
/// }
/// assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
/// assert_eq!(Colour::DarkBlue.name(), "dark-blue");
/// assert_eq!(Colour::Red.to_string(), "red");
/// assert_eq!("dark-blue".parse::<Colour>(), Ok(Colour::DarkBlue));
/// assert_eq!(
///     "green".parse::<Colour>().unwrap_err().to_string(),
///     "unknown Colour 'green' (known: red, dark-blue)"
/// );
/// ```
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Name:ident {
            $(
                $(#[$vmeta:meta])*
                $Variant:ident $(= $disc:expr)? => $name:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $Name {
            $(
                $(#[$vmeta])*
                $Variant $(= $disc)?,
            )+
        }

        impl $Name {
            /// Every variant, in declaration order.
            pub const ALL: [$Name; [$($name),+].len()] = [$($Name::$Variant),+];

            #[doc = concat!("The name of each variant: ", $("`", $name, "` "),+)]
            pub const fn name(self) -> &'static str {
                match self {
                    $($Name::$Variant => $name,)+
                }
            }
        }

        impl ::std::fmt::Display for $Name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $Name {
            type Err = $crate::named_enum::UnknownName;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $($name => Ok($Name::$Variant),)+
                    _ => Err($crate::named_enum::UnknownName {
                        what: stringify!($Name),
                        name: s.to_owned(),
                        known: &[$($name),+],
                    }),
                }
            }
        }
    };
}
