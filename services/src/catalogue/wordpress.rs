//! The WordPress stack (2): WordPress (Apache, PHP 8.3) and MariaDB.
//!
//! Source: the Docker Official Images docs for `wordpress` (`WORDPRESS_DB_*` variables,
//! `/var/www/html`) and `mariadb` (`MARIADB_*` variables, the image's `healthcheck.sh
//! --connect --innodb_initialized`). The PHP Apache image keeps curl, so the WordPress
//! probe is `curl -f` on the login page (a redirect to the installer also passes).

use super::build::{stack as make, svc};
use crate::model::Stack;

const DB_PASSWORD: &str = "wordpress/db_password";

pub(super) fn stack() -> Stack {
    make(
        "wordpress",
        "WordPress site (Apache) and its MariaDB",
        vec![
            svc("mariadb", "mariadb:11.4")
                .env("MARIADB_DATABASE", "wordpress")
                .env("MARIADB_USER", "wordpress")
                .secret_file("MARIADB_PASSWORD", DB_PASSWORD)
                .secret_file("MARIADB_ROOT_PASSWORD", "wordpress/db_root_password")
                .vol("wordpress-mariadb", "/var/lib/mysql")
                .backend()
                .health_cmd(&["healthcheck.sh", "--connect", "--innodb_initialized"])
                .timing(10, 5, 5, 30),
            svc("wordpress", "wordpress:6.6.2-php8.3-apache")
                .env("WORDPRESS_DB_HOST", "wordpress-mariadb:3306")
                .env("WORDPRESS_DB_USER", "wordpress")
                .env("WORDPRESS_DB_NAME", "wordpress")
                .secret_file("WORDPRESS_DB_PASSWORD", DB_PASSWORD)
                .vol("wordpress-html", "/var/www/html")
                .backend()
                .route_as("blog", 80)
                .health_curl(80, "/wp-login.php")
                .ui("Apps", "wordpress.png", "Website")
                .after_healthy("mariadb"),
        ],
    )
}
