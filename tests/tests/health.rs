//! The node starts and answers `/health`.

use restm_tests::Node;

#[tokio::test]
async fn health_answers_ok() {
    let node = Node::start();
    let resp = reqwest::get(node.url("/health")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: restm_shared::Health = resp.json().await.unwrap();
    assert_eq!(body.status, "ok");
}
