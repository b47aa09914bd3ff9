pub async fn serve(_node: std::sync::Arc<super::Node>, _l: tokio::net::TcpListener) -> Result<(), crate::Error> {
    Ok(())
}
