//! The storefront's backend-for-frontend endpoint:
//! `GET /storefront/orders/{id}` answers an order page in one call, with
//! the order, each line with its product, and the shipment. The gateway
//! makes the calls to the replicas (the products at once), through the
//! same balancer, retries and ejection as proxied requests; every call
//! carries the request id, so the replicas' logs tie them together.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::proxy::{Ctx, Proxy};

/// The order id of a storefront order path.
pub fn order_path(path: &str) -> Option<i64> {
    path.strip_prefix("/storefront/orders/")?
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// A failed call: the status for the client and what went wrong.
type Failure = (u16, Value);

/// `GET path` on a replica, retried on another one when it fails; the
/// replica's status and JSON body.
async fn get(p: &Proxy, ctx: &Ctx, path: &str) -> Result<(u16, Value), Failure> {
    let balancer = p.routing.get();
    let mut tried = Vec::new();
    loop {
        let Some(i) = balancer.pick(ctx.key, &tried) else {
            return Err((
                503,
                json!({"error": "no healthy replica, retry later", "field": ""}),
            ));
        };
        tried.push(i);
        let _inflight = balancer.start(i);
        let addr = balancer.backends[i].addr;
        let answer = async {
            let resp = p
                .http
                .get(format!("http://{addr}{path}"))
                .header("x-request-id", ctx.request_id.as_str())
                .timeout(Duration::from_millis(p.config.try_timeout_ms))
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        .await;
        match answer {
            Ok((status, body)) if !(502..=504).contains(&status) => {
                balancer.succeeded(i);
                return Ok((status, body));
            }
            Ok((status, _)) => {
                tracing::warn!(request_id = %ctx.request_id, backend = %addr, status, path,
                    "storefront call failed");
                balancer.failed(i);
            }
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, backend = %addr, %error, path,
                    "storefront call failed");
                balancer.failed(i);
            }
        }
        if tried.len() > p.config.retries as usize {
            return Err((
                502,
                json!({"error": format!("no replica answered {path}"), "field": ""}),
            ));
        }
    }
}

/// The composed order page: status and body.
pub(crate) async fn order_page(p: &Proxy, ctx: &Ctx, id: i64) -> (u16, Value) {
    match compose(p, ctx, id).await {
        Ok(page) => (200, page),
        Err((status, body)) => (status, body),
    }
}

async fn compose(p: &Proxy, ctx: &Ctx, id: i64) -> Result<Value, Failure> {
    let (order_path, shipment_path) = (format!("/orders/{id}"), format!("/orders/{id}/shipment"));
    let (order, shipment) = tokio::join!(get(p, ctx, &order_path), get(p, ctx, &shipment_path));
    let mut order = match order? {
        (200, order) => order,
        other => return Err(other),
    };
    let shipment = match shipment? {
        (200, s) => s,
        (404, _) => Value::Null,
        other => return Err(other),
    };
    let items = match order.as_object_mut().and_then(|o| o.remove("items")) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let product_ids: Vec<i64> = items
        .iter()
        .filter_map(|i| i.get("product_id")?.as_i64())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let fetched = futures::future::join_all(
        product_ids
            .iter()
            .map(|pid| async move { (*pid, get(p, ctx, &format!("/products/{pid}")).await) }),
    )
    .await;
    let mut products = BTreeMap::new();
    for (pid, answer) in fetched {
        match answer? {
            (200, product) => {
                products.insert(pid, product);
            }
            // A product deleted since the order: the line stays, bare.
            (404, _) => {}
            other => return Err(other),
        }
    }
    let lines: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            let product = item
                .get("product_id")
                .and_then(Value::as_i64)
                .and_then(|pid| products.get(&pid).cloned())
                .unwrap_or(Value::Null);
            if let Some(o) = item.as_object_mut() {
                o.insert("product".into(), product);
            }
            item
        })
        .collect();
    Ok(json!({"order": order, "lines": lines, "shipment": shipment}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_storefront_order_paths_are_composed() {
        assert_eq!(order_path("/storefront/orders/42"), Some(42));
        assert_eq!(order_path("/storefront/orders/42/"), Some(42));
        assert_eq!(order_path("/storefront/orders/x"), None);
        assert_eq!(order_path("/orders/42"), None);
    }
}
