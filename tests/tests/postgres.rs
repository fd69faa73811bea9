//! The local PostgreSQL server is real: sqlx runs queries and transactions on it.

use pipewright_testenv::TestSchema;
use sqlx::Row;

#[tokio::test]
async fn sqlx_queries_run_in_an_isolated_schema() {
    let schema = TestSchema::create("env_pg").await;
    let pool = &schema.pool;

    let current: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(current, schema.name);

    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY, body jsonb NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    for id in 1..=3_i64 {
        sqlx::query("INSERT INTO items (id, body) VALUES ($1, jsonb_build_object('n', $1))")
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
    }
    let rows = sqlx::query("SELECT id, body->>'n' AS n FROM items ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get("id"), r.get("n"))).collect();
    assert_eq!(got, vec![(1, "1".into()), (2, "2".into()), (3, "3".into())]);

    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(version >= 150000, "PostgreSQL 15 or newer, got {version}");
    schema.drop().await;
}

#[tokio::test]
async fn rolled_back_transaction_leaves_no_rows() {
    let schema = TestSchema::create("env_tx").await;
    let pool = &schema.pool;
    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(ids, vec![2]);
    schema.drop().await;
}
