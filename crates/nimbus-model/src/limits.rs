//! Per-action limits and the system's ranges and namespace throttles.

use crate::error::ModelError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionLimits {
    /// Milliseconds.
    pub timeout: u64,
    /// Megabytes.
    pub memory: u64,
    /// Megabytes of logs per activation.
    pub logs: u64,
    /// Activations one instance runs at once.
    pub concurrency: u64,
    /// Instances kept warm even when idle (0: scale to zero).
    #[serde(rename = "minInstances", default, skip_serializing_if = "is_zero")]
    pub min_instances: u64,
    /// Most instances this action may have at once on a node (over it, invocations wait).
    #[serde(
        rename = "maxInstances",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_instances: Option<u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Default for ActionLimits {
    fn default() -> Self {
        ActionLimits {
            timeout: 60_000,
            memory: 256,
            logs: 10,
            concurrency: 1,
            min_instances: 0,
            max_instances: None,
        }
    }
}

/// A limits object in a request: any subset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimitsPut {
    pub timeout: Option<u64>,
    pub memory: Option<u64>,
    pub logs: Option<u64>,
    pub concurrency: Option<u64>,
    #[serde(rename = "minInstances")]
    pub min_instances: Option<u64>,
    #[serde(rename = "maxInstances")]
    pub max_instances: Option<u64>,
}

/// Ranges and throttles of this deployment (`GET /api/v1/namespaces/{ns}/limits`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemLimits {
    pub invocations_per_minute: u64,
    pub concurrent_invocations: u64,
    pub fires_per_minute: u64,
    pub sequence_max_length: u64,
    pub max_parameter_size: u64,
    pub min_action_memory: u64,
    pub max_action_memory: u64,
    pub min_action_timeout: u64,
    pub max_action_timeout: u64,
    pub min_action_logs: u64,
    pub max_action_logs: u64,
    pub min_action_concurrency: u64,
    pub max_action_concurrency: u64,
    pub max_action_instances: u64,
}

impl Default for SystemLimits {
    fn default() -> Self {
        SystemLimits {
            // Generous defaults: Nimbus targets one machine's capacity, not a shared cloud's fairness.
            invocations_per_minute: 6_000,
            concurrent_invocations: 100,
            fires_per_minute: 6_000,
            sequence_max_length: 50,
            max_parameter_size: 1024 * 1024,
            min_action_memory: 128,
            max_action_memory: 2048,
            min_action_timeout: 100,
            max_action_timeout: 300_000,
            min_action_logs: 0,
            max_action_logs: 10,
            min_action_concurrency: 1,
            // Above 1 only for kinds whose instances multiplex (Node.js); checked by the controller.
            max_action_concurrency: 500,
            max_action_instances: 64,
        }
    }
}

fn check(what: &str, unit: &str, v: u64, min: u64, max: u64) -> Result<(), ModelError> {
    if v < min {
        Err(ModelError::invalid(format!(
            "{what} {v} {unit} below allowed threshold of {min} {unit}."
        )))
    } else if v > max {
        Err(ModelError::invalid(format!(
            "{what} {v} {unit} exceeds allowed threshold of {max} {unit}."
        )))
    } else {
        Ok(())
    }
}

impl ActionLimits {
    /// Applies a request's subset over `self` and checks every value against the system's ranges.
    pub fn apply(&self, put: &LimitsPut, sys: &SystemLimits) -> Result<ActionLimits, ModelError> {
        let l = ActionLimits {
            timeout: put.timeout.unwrap_or(self.timeout),
            memory: put.memory.unwrap_or(self.memory),
            logs: put.logs.unwrap_or(self.logs),
            concurrency: put.concurrency.unwrap_or(self.concurrency),
            min_instances: put.min_instances.unwrap_or(self.min_instances),
            max_instances: put.max_instances.or(self.max_instances),
        };
        check(
            "Time limit",
            "milliseconds",
            l.timeout,
            sys.min_action_timeout,
            sys.max_action_timeout,
        )?;
        check(
            "Memory limit",
            "MB",
            l.memory,
            sys.min_action_memory,
            sys.max_action_memory,
        )?;
        check(
            "Log limit",
            "MB",
            l.logs,
            sys.min_action_logs,
            sys.max_action_logs,
        )?;
        check(
            "Concurrency limit",
            "activations",
            l.concurrency,
            sys.min_action_concurrency,
            sys.max_action_concurrency,
        )?;
        check(
            "Minimum instances",
            "instances",
            l.min_instances,
            0,
            sys.max_action_instances,
        )?;
        if let Some(max) = l.max_instances {
            check(
                "Maximum instances",
                "instances",
                max,
                1,
                sys.max_action_instances,
            )?;
            if l.min_instances > max {
                return Err(ModelError::invalid(format!(
                    "minInstances ({}) cannot exceed maxInstances ({max}).",
                    l.min_instances
                )));
            }
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_limits_are_rejected() {
        let sys = SystemLimits::default();
        let d = ActionLimits::default();
        assert!(
            d.apply(
                &LimitsPut {
                    timeout: Some(50),
                    ..Default::default()
                },
                &sys
            )
            .is_err()
        );
        assert!(
            d.apply(
                &LimitsPut {
                    memory: Some(100_000),
                    ..Default::default()
                },
                &sys
            )
            .is_err()
        );
        let l = d
            .apply(
                &LimitsPut {
                    timeout: Some(1000),
                    ..Default::default()
                },
                &sys,
            )
            .unwrap();
        assert_eq!(l.timeout, 1000);
        assert_eq!(l.memory, 256);
    }

    #[test]
    fn instance_bounds_are_checked_and_hidden_when_unset() {
        let sys = SystemLimits::default();
        let d = ActionLimits::default();
        let v = serde_json::to_value(d).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1})
        );
        let l = d
            .apply(
                &LimitsPut {
                    min_instances: Some(1),
                    max_instances: Some(3),
                    ..Default::default()
                },
                &sys,
            )
            .unwrap();
        assert_eq!((l.min_instances, l.max_instances), (1, Some(3)));
        assert_eq!(serde_json::to_value(l).unwrap()["maxInstances"], 3);
        assert!(
            d.apply(
                &LimitsPut {
                    min_instances: Some(4),
                    max_instances: Some(3),
                    ..Default::default()
                },
                &sys
            )
            .is_err()
        );
        assert!(
            d.apply(
                &LimitsPut {
                    max_instances: Some(0),
                    ..Default::default()
                },
                &sys
            )
            .is_err()
        );
        assert!(
            d.apply(
                &LimitsPut {
                    min_instances: Some(1000),
                    ..Default::default()
                },
                &sys
            )
            .is_err()
        );
    }
}
