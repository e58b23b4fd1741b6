package mysql

// UseMySQL8 makes d speak to the server as to MySQL 8 (no SET STATEMENT),
// whatever the server is.
func (d *Dialect) UseMySQL8() { d.flavor.Store(flavorMySQL) }
