module rtcrm.dev/filter

go 1.24
