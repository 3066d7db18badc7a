module lpm.my.domain/lpm-runc

go 1.26
