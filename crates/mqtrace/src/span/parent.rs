//! The parent-or-link choice of a process span: a pure function of the policy and of which
//! contexts exist, so every rule of the README's table is a unit test here.

use crate::config::ParentPolicy;

/// What the process span's parent is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parent {
    /// The message's creation context (from its headers).
    Creation,
    /// The current context: the ambient span if one is active, else none (a new root).
    Ambient,
}

/// The outcome of [`choose`]: the parent, and which of the other contexts are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) parent: Parent,
    /// Link the creation context (always, when there is one: the conventions' link).
    pub(crate) link_creation: bool,
    /// Link the ambient span (`mqtrace.link.type = ambient`), when it is not the parent.
    pub(crate) link_ambient: bool,
    /// Hand a trusted producer's baggage to the handler although its context is not the
    /// parent (the ambient context's own baggage wins when it has any).
    pub(crate) carry_baggage: bool,
}

/// What [`choose`] looks at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Contexts {
    /// The message carried a valid creation context.
    pub(crate) creation: bool,
    /// The message's source is trusted ([`crate::Trust`]).
    pub(crate) trusted: bool,
    /// A span is active where the process span starts (a consumer loop inside a span).
    pub(crate) ambient: bool,
}

/// Chooses the process span's parent and links.
///
/// | policy | parent | linked |
/// | --- | --- | --- |
/// | `CreationContext` (default) | creation context | creation context, ambient span |
/// | `AmbientSpan` | ambient span if any, else creation context | creation context |
/// | `AlwaysLink` | ambient span if any, else a new root | creation context |
///
/// An untrusted source is never the parent, under every policy: it is only linked, and its
/// baggage is dropped. Without a creation context the ambient span (or a new root) is the
/// parent.
pub(crate) fn choose(policy: ParentPolicy, cx: Contexts) -> Choice {
    let creation_parent = cx.creation
        && cx.trusted
        && match policy {
            ParentPolicy::CreationContext => true,
            ParentPolicy::AmbientSpan => !cx.ambient,
            ParentPolicy::AlwaysLink => false,
        };
    Choice {
        parent: if creation_parent {
            Parent::Creation
        } else {
            Parent::Ambient
        },
        link_creation: cx.creation,
        link_ambient: creation_parent && cx.ambient,
        carry_baggage: !creation_parent && cx.creation && cx.trusted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ParentPolicy; 3] = [
        ParentPolicy::CreationContext,
        ParentPolicy::AmbientSpan,
        ParentPolicy::AlwaysLink,
    ];

    fn cx(creation: bool, trusted: bool, ambient: bool) -> Contexts {
        Contexts {
            creation,
            trusted,
            ambient,
        }
    }

    #[test]
    fn default_parents_to_the_creation_context_even_inside_an_ambient_span() {
        let c = choose(ParentPolicy::default(), cx(true, true, true));
        assert_eq!(c.parent, Parent::Creation);
        assert!(c.link_creation && c.link_ambient && !c.carry_baggage);
        let c = choose(ParentPolicy::default(), cx(true, true, false));
        assert_eq!(c.parent, Parent::Creation);
        assert!(c.link_creation && !c.link_ambient);
    }

    #[test]
    fn ambient_span_policy_parents_to_the_loop_span_and_links_the_message() {
        let c = choose(ParentPolicy::AmbientSpan, cx(true, true, true));
        assert_eq!(c.parent, Parent::Ambient);
        assert!(c.link_creation && !c.link_ambient && c.carry_baggage);
        // No ambient span: the creation context is the parent after all.
        let c = choose(ParentPolicy::AmbientSpan, cx(true, true, false));
        assert_eq!(c.parent, Parent::Creation);
    }

    #[test]
    fn always_link_never_parents_to_the_message() {
        for ambient in [true, false] {
            let c = choose(ParentPolicy::AlwaysLink, cx(true, true, ambient));
            assert_eq!(c.parent, Parent::Ambient);
            assert!(c.link_creation && !c.link_ambient && c.carry_baggage);
        }
    }

    #[test]
    fn untrusted_sources_are_only_linked_and_keep_no_baggage_under_every_policy() {
        for policy in ALL {
            for ambient in [true, false] {
                let c = choose(policy, cx(true, false, ambient));
                assert_eq!(c.parent, Parent::Ambient, "{policy:?}");
                assert!(c.link_creation && !c.link_ambient && !c.carry_baggage);
            }
        }
    }

    #[test]
    fn without_a_creation_context_nothing_is_linked() {
        for policy in ALL {
            for ambient in [true, false] {
                let c = choose(policy, cx(false, true, ambient));
                assert_eq!(c.parent, Parent::Ambient);
                assert!(!c.link_creation && !c.link_ambient && !c.carry_baggage);
            }
        }
    }
}
